//! Box geometry on tensors: format conversion and aligned IoU/GIoU, differentiable, for the
//! regression losses.

use burn::tensor::Tensor;

/// `[N, 4]` cx, cy, w, h → x1, y1, x2, y2.
pub fn cxcywh_to_xyxy(b: Tensor<2>) -> Tensor<2> {
    let c = b.clone().narrow(1, 0, 2);
    let half = b.narrow(1, 2, 2) * 0.5;
    Tensor::cat(vec![c.clone() - half.clone(), c + half], 1)
}

/// Aligned IoU and generalised IoU of `a[i]` vs `b[i]`, both `[N, 4]` xyxy → (`[N]`, `[N]`).
/// The eps (mmdet's 1e-6) keeps empty and degenerate boxes finite.
pub fn iou_giou_aligned(a: Tensor<2>, b: Tensor<2>) -> (Tensor<1>, Tensor<1>) {
    const EPS: f64 = 1e-6;
    let n = a.dims()[0];
    let (a_lt, a_rb) = (a.clone().narrow(1, 0, 2), a.narrow(1, 2, 2));
    let (b_lt, b_rb) = (b.clone().narrow(1, 0, 2), b.narrow(1, 2, 2));
    let area = |lt: Tensor<2>, rb: Tensor<2>| {
        let wh = (rb - lt).clamp_min(0.0);
        (wh.clone().narrow(1, 0, 1) * wh.narrow(1, 1, 1)).reshape([n])
    };
    let area_a = area(a_lt.clone(), a_rb.clone());
    let area_b = area(b_lt.clone(), b_rb.clone());
    let inter = area(
        a_lt.clone().max_pair(b_lt.clone()),
        a_rb.clone().min_pair(b_rb.clone()),
    );
    let union = (area_a + area_b - inter.clone()).clamp_min(EPS);
    let iou = inter / union.clone();
    let enclose = area(a_lt.min_pair(b_lt), a_rb.max_pair(b_rb)).clamp_min(EPS);
    let giou = iou.clone() - (enclose.clone() - union) / enclose;
    (iou, giou)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(v: Vec<f32>) -> Tensor<2> {
        let n = v.len() / 4;
        Tensor::from_data(TensorData::new(v, [n, 4]), &Device::flex())
    }

    #[test]
    fn iou_and_giou_by_hand() {
        // identical; half-overlapping; disjoint (gap 1 between unit squares); empty box
        let a = t(vec![
            0., 0., 2., 2., 0., 0., 2., 2., 0., 0., 1., 1., 0., 0., 0., 0.,
        ]);
        let b = t(vec![
            0., 0., 2., 2., 1., 0., 3., 2., 2., 0., 3., 1., 0., 0., 1., 1.,
        ]);
        let (iou, giou) = iou_giou_aligned(a, b);
        let iou: Vec<f32> = iou.into_data().try_to_vec().unwrap();
        let giou: Vec<f32> = giou.into_data().try_to_vec().unwrap();
        let want_iou = [1.0, 2.0 / 6.0, 0.0, 0.0];
        // disjoint: union 2, enclosing 3 → −1/3; empty vs unit: union 1, enclosing 1 → 0
        let want_giou = [1.0, 2.0 / 6.0 - 0.0, -1.0 / 3.0, 0.0];
        for i in 0..4 {
            assert!((iou[i] - want_iou[i]).abs() < 1e-5, "{iou:?}");
            assert!((giou[i] - want_giou[i]).abs() < 1e-5, "{giou:?}");
        }
    }

    #[test]
    fn converts_cxcywh() {
        let x: Vec<f32> = cxcywh_to_xyxy(t(vec![0.5, 0.5, 0.2, 0.4]))
            .into_data()
            .try_to_vec()
            .unwrap();
        let want = [0.4, 0.3, 0.6, 0.7];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
