//! Classification losses on sigmoid logits: BCE, sigmoid focal (RetinaNet/ATSS) and quality
//! focal (Generalized Focal Loss, β = 2 — the Co-DINO head's loss). All return the SUM over
//! elements: callers divide by their `avg_factor`, as the official heads do.

use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};

/// Element-wise `BCE(sigmoid(x), t)`, computed stably as `max(x,0) − x·t + log(1 + e^{−|x|})`.
pub fn bce_with_logits<const D: usize>(x: Tensor<D>, t: Tensor<D>) -> Tensor<D> {
    relu(x.clone()) - x.clone() * t + x.abs().neg().exp().log1p()
}

/// Quality focal loss summed over `[N, C]`: `BCE(x, t) · |t − σ(x)|^β`, where `t` is the IoU
/// of the matched box at the gt class and 0 elsewhere (so negatives reduce to `BCE(x,0)·σ^β`,
/// exactly mmdet's two-branch form).
pub fn quality_focal_sum(x: Tensor<2>, t: Tensor<2>, beta: f64) -> Tensor<1> {
    let scale = (t.clone() - sigmoid(x.clone())).abs().powf_scalar(beta);
    (bce_with_logits(x, t) * scale).sum()
}

/// Sigmoid focal loss summed over `[N, C]` with binary targets `t`:
/// `α_t (1 − p_t)^γ BCE(x, t)`.
pub fn sigmoid_focal_sum(x: Tensor<2>, t: Tensor<2>, alpha: f64, gamma: f64) -> Tensor<1> {
    sigmoid_focal(x, t, alpha, gamma).sum()
}

/// [`sigmoid_focal_sum`] with each row weighted by `w` `[N, 1]` (0 leaves a row out: an
/// anchor over an image's padding).
pub fn sigmoid_focal_weighted_sum(
    x: Tensor<2>,
    t: Tensor<2>,
    w: Tensor<2>,
    alpha: f64,
    gamma: f64,
) -> Tensor<1> {
    (sigmoid_focal(x, t, alpha, gamma) * w).sum()
}

/// The element-wise sigmoid focal loss `[N, C]`.
fn sigmoid_focal(x: Tensor<2>, t: Tensor<2>, alpha: f64, gamma: f64) -> Tensor<2> {
    let p = sigmoid(x.clone());
    let p_t = p.clone() * t.clone() + (p.neg() + 1.0) * (t.clone().neg() + 1.0);
    let alpha_t = t.clone() * alpha + (t.clone().neg() + 1.0) * (1.0 - alpha);
    bce_with_logits(x, t) * alpha_t * (p_t.neg() + 1.0).powf_scalar(gamma)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(v: Vec<f32>, c: usize) -> Tensor<2> {
        let n = v.len() / c;
        Tensor::from_data(TensorData::new(v, [n, c]), &Device::flex())
    }

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn bce(x: f64, t: f64) -> f64 {
        -(t * sig(x).ln() + (1.0 - t) * (1.0 - sig(x)).ln())
    }

    #[test]
    fn quality_focal_by_hand() {
        let xs = [2.0, -1.0, 0.5, -3.0];
        let ts = [0.7, 0.0, 0.0, 0.3];
        let got: f32 =
            quality_focal_sum(t(xs.map(|v| v as f32).to_vec(), 2), t(ts.to_vec(), 2), 2.0)
                .into_scalar();
        let want: f64 = xs
            .iter()
            .zip(ts)
            .map(|(&x, tt)| bce(x, tt as f64) * (tt as f64 - sig(x)).abs().powi(2))
            .sum();
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn focal_by_hand_and_stable_for_large_logits() {
        let xs = [2.0f64, -1.0, 30.0, -30.0];
        let ts = [1.0f32, 0.0, 0.0, 1.0];
        let got: f32 = sigmoid_focal_sum(
            t(xs.map(|v| v as f32).to_vec(), 2),
            t(ts.to_vec(), 2),
            0.25,
            2.0,
        )
        .into_scalar();
        let want: f64 = xs
            .iter()
            .zip(ts)
            .map(|(&x, tt)| {
                let tt = tt as f64;
                let p = sig(x);
                let pt = p * tt + (1.0 - p) * (1.0 - tt);
                let at = 0.25 * tt + 0.75 * (1.0 - tt);
                // log-space BCE for the saturated cases
                let b = x.max(0.0) - x * tt + (-x.abs()).exp().ln_1p();
                at * (1.0 - pt).powi(2) * b
            })
            .sum();
        assert!(got.is_finite());
        assert!(
            (got as f64 - want).abs() < 1e-3 * want.max(1.0),
            "{got} vs {want}"
        );
    }
}
