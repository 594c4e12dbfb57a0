//! mmdet's `DeltaXYWHBBoxCoder` (means 0): the regression targets of the ATSS, RPN and RoI
//! heads, on the host (assignment targets, proposal decoding) and on tensors (the losses).

use burn::tensor::{Tensor, TensorData};

use super::boxes::center;

/// mmdet's `wh_ratio_clip` (16 / 1000): decoded width/height may change by at most this factor
/// (or its inverse), so wild regression outputs cannot explode the box.
const WH_RATIO_CLIP: f32 = 16.0 / 1000.0;

/// Smallest width/height used by [`DeltaCoder::encode`], so a degenerate box yields a large but
/// finite delta instead of `inf`/`NaN` (identical to mmdet for every non-degenerate box).
const MIN_SIZE: f32 = 1e-6;

/// mmdet's `DeltaXYWHBBoxCoder` with means 0:
/// `dx = (gx − px) / pw / s0`, `dy = (gy − py) / ph / s1`, `dw = ln(gw / pw) / s2`,
/// `dh = ln(gh / ph) / s3`, with centres `(x1 + x2) / 2` and sizes `x2 − x1` (no `+1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeltaCoder {
    /// Per-component divisors of the deltas (mmdet `target_stds`).
    pub stds: [f32; 4],
}

impl Default for DeltaCoder {
    /// Co-DETR's ATSS head uses `target_stds = [0.1, 0.1, 0.2, 0.2]`.
    fn default() -> Self {
        Self {
            stds: [0.1, 0.1, 0.2, 0.2],
        }
    }
}

impl DeltaCoder {
    /// Regression target taking `anchor` to `gt` (mmdet `bbox2delta`). Sizes are floored at
    /// 1e-6 px so degenerate boxes stay finite.
    pub fn encode(&self, anchor: [f32; 4], gt: [f32; 4]) -> [f32; 4] {
        let [px, py] = center(anchor);
        let pw = (anchor[2] - anchor[0]).max(MIN_SIZE);
        let ph = (anchor[3] - anchor[1]).max(MIN_SIZE);
        let [gx, gy] = center(gt);
        let gw = (gt[2] - gt[0]).max(MIN_SIZE);
        let gh = (gt[3] - gt[1]).max(MIN_SIZE);
        [
            (gx - px) / pw / self.stds[0],
            (gy - py) / ph / self.stds[1],
            (gw / pw).ln() / self.stds[2],
            (gh / ph).ln() / self.stds[3],
        ]
    }

    /// Box from `anchor` and `delta` (mmdet `delta2bbox`, no image clipping): the de-normalised
    /// `dw`/`dh` are clamped to `±|ln(16/1000)|` before `exp`.
    pub fn decode(&self, anchor: [f32; 4], delta: [f32; 4]) -> [f32; 4] {
        let max_ratio = WH_RATIO_CLIP.ln().abs();
        let dx = delta[0] * self.stds[0];
        let dy = delta[1] * self.stds[1];
        let dw = (delta[2] * self.stds[2]).clamp(-max_ratio, max_ratio);
        let dh = (delta[3] * self.stds[3]).clamp(-max_ratio, max_ratio);
        let [px, py] = center(anchor);
        let pw = anchor[2] - anchor[0];
        let ph = anchor[3] - anchor[1];
        let gw = pw * dw.exp();
        let gh = ph * dh.exp();
        let gx = px + pw * dx;
        let gy = py + ph * dy;
        [gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5]
    }
}

/// mmdet DeltaXYWHBBoxCoder.decode on tensors: `anchors`/`deltas` `[P, 4]` → xyxy `[P, 4]`.
pub fn decode_deltas(anchors: Tensor<2>, deltas: Tensor<2>, coder: &DeltaCoder) -> Tensor<2> {
    let device = deltas.device();
    let p = deltas.dims()[0];
    let stds =
        Tensor::<1>::from_data(TensorData::new(coder.stds.to_vec(), [4]), &device).reshape([1, 4]);
    let d = deltas * stds;
    let max_ratio = (1000.0f64 / 16.0).ln();
    let (x1, y1) = (
        anchors.clone().narrow(1, 0, 1),
        anchors.clone().narrow(1, 1, 1),
    );
    let (x2, y2) = (anchors.clone().narrow(1, 2, 1), anchors.narrow(1, 3, 1));
    let pw = x2.clone() - x1.clone();
    let ph = y2.clone() - y1.clone();
    let px = (x1 + x2) * 0.5;
    let py = (y1 + y2) * 0.5;
    let gx = px + pw.clone() * d.clone().narrow(1, 0, 1);
    let gy = py + ph.clone() * d.clone().narrow(1, 1, 1);
    let gw = pw * d.clone().narrow(1, 2, 1).clamp(-max_ratio, max_ratio).exp();
    let gh = ph * d.narrow(1, 3, 1).clamp(-max_ratio, max_ratio).exp();
    let out = Tensor::cat(
        vec![
            gx.clone() - gw.clone() * 0.5,
            gy.clone() - gh.clone() * 0.5,
            gx + gw * 0.5,
            gy + gh * 0.5,
        ],
        1,
    );
    out.reshape([p, 4])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use codetr_data::rng::Rng;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    /// A random box with sides in `[min, max)` somewhere around a 100-px image.
    fn bx(r: &mut Rng, min: f32, max: f32) -> [f32; 4] {
        let x = r.uniform(-20.0, 120.0);
        let y = r.uniform(-20.0, 120.0);
        [x, y, x + r.uniform(min, max), y + r.uniform(min, max)]
    }

    #[test]
    fn delta_coder_hand_case() {
        // anchor [0,0,10,10]: p = (5,5), size 10×10; gt [2,4,14,24]: g = (8,14), size 12×20.
        // dx = 0.3/0.1 = 3, dy = 0.9/0.1 = 9, dw = ln 1.2/0.2 = 0.911608, dh = ln 2/0.2 = 3.465736.
        let c = DeltaCoder::default();
        let d = c.encode([0.0, 0.0, 10.0, 10.0], [2.0, 4.0, 14.0, 24.0]);
        let e = [3.0, 9.0, 0.911_608, 3.465_736];
        for k in 0..4 {
            assert!(close(d[k], e[k], 1e-5), "{d:?}");
        }
        let b = c.decode([0.0, 0.0, 10.0, 10.0], e);
        for (k, v) in [2.0, 4.0, 14.0, 24.0].into_iter().enumerate() {
            assert!(close(b[k], v, 1e-4), "{b:?}");
        }
        // Clamp: huge dw/dh → size ×1000/16 = 625 at most (×16/1000 = 0.16 at least).
        let b = c.decode([0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 1e4, -1e4]);
        assert!(close(b[2] - b[0], 625.0, 1e-2), "{b:?}");
        assert!(close(b[3] - b[1], 0.16, 1e-5), "{b:?}");
    }

    #[test]
    fn delta_coder_round_trip() {
        let mut rng = Rng::new(42);
        let coders = [DeltaCoder::default(), DeltaCoder { stds: [1.0; 4] }];
        for _ in 0..2000 {
            let a = bx(&mut rng, 2.0, 100.0);
            let g = bx(&mut rng, 2.0, 100.0);
            for c in &coders {
                let back = c.decode(a, c.encode(a, g));
                for k in 0..4 {
                    assert!(close(back[k], g[k], 1e-4), "{a:?} {g:?} {back:?}");
                }
            }
        }
    }

    /// The tensor decode equals the host decode (the losses and the proposals agree).
    #[test]
    fn tensor_decode_equals_host_decode() {
        let mut rng = Rng::new(3);
        let coder = DeltaCoder::default();
        let anchors: Vec<[f32; 4]> = (0..64).map(|_| bx(&mut rng, 2.0, 80.0)).collect();
        let deltas: Vec<[f32; 4]> = (0..64)
            .map(|_| [0, 1, 2, 3].map(|_| rng.uniform(-3.0, 3.0)))
            .collect();
        let dev = Device::flex();
        let t = |v: &[[f32; 4]]| {
            Tensor::<2>::from_data(TensorData::new(v.concat(), [v.len(), 4]), &dev)
        };
        let got: Vec<f32> = decode_deltas(t(&anchors), t(&deltas), &coder)
            .into_data()
            .try_to_vec()
            .unwrap();
        for (k, (a, d)) in anchors.iter().zip(&deltas).enumerate() {
            let want = coder.decode(*a, *d);
            for e in 0..4 {
                assert!(close(got[4 * k + e], want[e], 1e-3), "{k}: {want:?}");
            }
        }
    }
}
