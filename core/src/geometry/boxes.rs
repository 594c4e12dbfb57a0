//! Host box geometry: centres, format conversion and the two IoUs training uses.
//!
//! - [`iou`]: mmdet's `bbox_overlaps` in f32 (pixels, xyxy), what the ATSS and MaxIoU assigners
//!   and NMS compare; degenerate or non-finite boxes give 0, never NaN.
//! - [`iou_giou`] / [`iou_giou_f64`]: IoU and GIoU in f64 with mmdet's area floor, the
//!   Hungarian matcher's box cost (normalised cxcywh converted to xyxy).
//!
//! COCO's own IoU (xywh, crowd regions) stays in the evaluator, which reproduces pycocotools as
//! one unit. The differentiable forms are in [`super::tensor`].

/// Centre `(cx, cy)` of an xyxy box.
pub fn center(b: [f32; 4]) -> [f32; 2] {
    [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0]
}

/// Intersection over union of two xyxy boxes, as mmdet `bbox_overlaps` (intersection clamped at
/// zero, areas not clamped). Returns 0 where the union is not positive or the result is not
/// finite, so degenerate or NaN boxes never poison a max/argmax.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    let union = area_a + area_b - inter;
    let v = inter / union;
    if union > 0.0 && v.is_finite() { v } else { 0.0 }
}

/// Converts a `(cx, cy, w, h)` box to `(x0, y0, x1, y1)`.
#[must_use]
pub fn cxcywh_to_xyxy(b: [f32; 4]) -> [f32; 4] {
    let [cx, cy, w, h] = b;
    [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
}

/// Floor for union and enclosing areas so degenerate (zero-area) boxes give
/// finite IoU/GIoU instead of 0/0.
const AREA_EPS: f64 = 1e-7;

/// IoU and generalized IoU of two `xyxy` boxes.
///
/// Computed in `f64` internally so the matcher's cost and this helper agree exactly.
#[must_use]
pub fn iou_giou(a: [f32; 4], b: [f32; 4]) -> (f32, f32) {
    let (iou, giou) = iou_giou_f64(a.map(f64::from), b.map(f64::from));
    (iou as f32, giou as f32)
}

pub fn iou_giou_f64(a: [f64; 4], b: [f64; 4]) -> (f64, f64) {
    // Clamp widths at zero so inverted (x1 < x0) predictions count as empty.
    let area = |r: [f64; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let inter_w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let inter_h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = inter_w * inter_h;
    let union = (area(a) + area(b) - inter).max(AREA_EPS);
    let iou = inter / union;
    let encl_w = (a[2].max(b[2]) - a[0].min(b[0])).max(0.0);
    let encl_h = (a[3].max(b[3]) - a[1].min(b[1])).max(0.0);
    let enclose = (encl_w * encl_h).max(AREA_EPS);
    (iou, iou - (enclose - union) / enclose)
}

pub fn cxcywh_to_xyxy_f64(b: [f64; 4]) -> [f64; 4] {
    let [cx, cy, w, h] = b;
    [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-6
    }

    #[test]
    fn box_conversion() {
        let got = cxcywh_to_xyxy([0.5, 0.5, 0.2, 0.4]);
        let want = [0.4, 0.3, 0.6, 0.7];
        assert!(got.iter().zip(&want).all(|(&g, &w)| close(g, w)), "{got:?}");
    }

    #[test]
    fn iou_giou_hand_computed() {
        let a = [0.1, 0.2, 0.5, 0.6];
        let (iou, giou) = iou_giou(a, a);
        assert!(close(iou, 1.0) && close(giou, 1.0), "{iou} {giou}");

        // Disjoint unit squares one unit apart: union 2, hull 3 → GIoU −1/3.
        let (iou, giou) = iou_giou([0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]);
        assert_eq!(iou, 0.0);
        assert!(close(giou, -1.0 / 3.0), "{giou}");

        // Overlap 1, union 7, hull 9 → IoU 1/7, GIoU 1/7 − 2/9 = −5/63.
        let (iou, giou) = iou_giou([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]);
        assert!(close(iou, 1.0 / 7.0), "{iou}");
        assert!(close(giou, -5.0 / 63.0), "{giou}");

        for (a, b) in [
            ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]),
            ([0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.2, 0.2]),
            ([0.1, 0.1, 0.1, 0.9], [0.3, 0.1, 0.3, 0.9]),
        ] {
            let (iou, giou) = iou_giou(a, b);
            assert!(iou.is_finite() && giou.is_finite(), "{a:?} {b:?}");
            assert!((0.0..=1.0).contains(&iou) && (-1.0..=1.0).contains(&giou));
        }
    }

    #[test]
    fn iou_by_hand_and_degenerate() {
        assert_eq!(iou([0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]), 1.0);
        assert_eq!(iou([0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]), 2.0 / 6.0);
        assert_eq!(iou([0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]), 0.0);
        assert_eq!(iou([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]), 0.0);
        assert_eq!(iou([f32::NAN, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]), 0.0);
        assert_eq!(
            iou([0.0, 0.0, f32::INFINITY, 1.0], [0.0, 0.0, 1.0, 1.0]),
            0.0
        );
        assert_eq!(center([0.0, 2.0, 4.0, 10.0]), [2.0, 6.0]);
    }
}
