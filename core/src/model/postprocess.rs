//! NMS-free postprocess: sigmoid over queries × classes, top-k, cxcywh → xyxy, scaled to each
//! original image and clamped to it. The exporter emits exactly these steps in the graph.

use burn::tensor::activation::sigmoid;
use burn::tensor::{Int, Tensor, TensorData};

/// Top-k detections per image, sorted by descending score.
pub struct Detections {
    /// `[B, K]`
    pub scores: Tensor<2>,
    /// `[B, K]` contiguous class labels
    pub labels: Tensor<2, Int>,
    /// `[B, K, 4]` `x1, y1, x2, y2` in pixels of the original image
    pub boxes: Tensor<3>,
}

impl Detections {
    /// Host copies, row-major: scores `[B·K]`, labels `[B·K]`, boxes `[B·K·4]`.
    pub fn to_host(self) -> crate::Result<(Vec<f32>, Vec<i64>, Vec<f32>)> {
        let host = |e: burn::tensor::DataError| crate::Error::InvalidArgument {
            what: "model output",
            message: format!("{e:?}"),
        };
        Ok((
            self.scores
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .map_err(host)?,
            self.labels
                .into_data()
                .convert::<i64>()
                .try_to_vec()
                .map_err(host)?,
            self.boxes
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .map_err(host)?,
        ))
    }
}

/// - `logits`: `[B, Q, C]` class logits of the last decoder layer
/// - `boxes`: `[B, Q, 4]` normalised cxcywh
/// - `orig_sizes`: `(height, width)` of each original image
/// - `k`: detections kept per image (≤ Q·C)
pub fn postprocess(
    logits: Tensor<3>,
    boxes: Tensor<3>,
    orig_sizes: &[[u32; 2]],
    k: usize,
) -> Detections {
    let device = logits.device();
    let [b, q, c] = logits.dims();
    let k = k.min(q * c);
    let probs = sigmoid(logits).reshape([b, q * c]);
    let (scores, index) = super::topk::topk_ties_by_index(probs, k);
    let labels = index.clone().remainder_scalar(c as i64);
    let query = index.div_scalar(c as i64);
    let picked = boxes.gather(1, query.reshape([b, k, 1]).expand([b, k, 4]));
    let cx = picked.clone().narrow(2, 0, 1);
    let cy = picked.clone().narrow(2, 1, 1);
    let w = picked.clone().narrow(2, 2, 1);
    let h = picked.narrow(2, 3, 1);
    let xyxy = Tensor::cat(
        vec![
            cx.clone() - w.clone() * 0.5,
            cy.clone() - h.clone() * 0.5,
            cx + w * 0.5,
            cy + h * 0.5,
        ],
        2,
    );
    let scale: Vec<f32> = orig_sizes
        .iter()
        .flat_map(|&[hh, ww]| [ww as f32, hh as f32, ww as f32, hh as f32])
        .collect();
    let scale = Tensor::<1>::from_data(TensorData::new(scale, [b * 4]), &device).reshape([b, 1, 4]);
    let px = (xyxy * scale.clone()).clamp_min(0.0);
    // Clamp to the image: min(x, W) via W − relu(W − x).
    let px = scale.clone().expand([b, k, 4]) - (scale.expand([b, k, 4]) - px).clamp_min(0.0);
    Detections {
        scores,
        labels,
        boxes: px,
    }
}

/// ONNX emitter of [`postprocess`]: `logits` `[N, Q, C]`, `boxes` `[N, Q, 4]`, `orig_sizes`
/// int64 `[N, 2]` (h, w) → (labels int64 `[N, K]`, scores `[N, K]`, boxes `[N, K, 4]`).
pub fn emit_postprocess(
    g: &mut crate::onnx::GraphBuilder,
    logits: &str,
    boxes: &str,
    orig_sizes: &str,
    num_classes: usize,
    k: usize,
) -> (String, String, String) {
    use crate::onnx::builder::Attr;
    let p = g.node("Sigmoid", &[logits], vec![]);
    let flat = g.ints(&[0, -1]);
    let p = g.node("Reshape", &[&p, &flat], vec![]);
    let kk = g.ints(&[k as i64]);
    let tk = g.node_n(
        "TopK",
        &[&p, &kk],
        vec![("axis", Attr::Int(1)), ("sorted", Attr::Int(1))],
        2,
    );
    let c = g.init_i64("num_classes", &[], &[num_classes as i64]);
    let labels = g.node("Mod", &[&tk[1], &c], vec![]);
    let query = g.node("Div", &[&tk[1], &c], vec![]);
    let ax2 = g.ints(&[2]);
    let q = g.node("Unsqueeze", &[&query, &ax2], vec![]);
    let four = g.ints(&[1, 1, 4]);
    let q = g.node("Expand", &[&q, &four], vec![]);
    let picked = g.node("GatherElements", &[boxes, &q], vec![("axis", Attr::Int(1))]);
    // cxcywh → xyxy as one matrix product
    let m = g.init_f32(
        "cxcywh_to_xyxy",
        &[4, 4],
        &[
            1.0, 0.0, 1.0, 0.0, //
            0.0, 1.0, 0.0, 1.0, //
            -0.5, 0.0, 0.5, 0.0, //
            0.0, -0.5, 0.0, 0.5,
        ],
    );
    let xyxy = g.node("MatMul", &[&picked, &m], vec![]);
    let sizes = g.node("Cast", &[orig_sizes], vec![("to", Attr::Int(1))]);
    let whwh = g.ints(&[1, 0, 1, 0]);
    let scale = g.node("Gather", &[&sizes, &whwh], vec![("axis", Attr::Int(1))]);
    let ax1 = g.ints(&[1]);
    let scale = g.node("Unsqueeze", &[&scale, &ax1], vec![]);
    let px = g.node("Mul", &[&xyxy, &scale], vec![]);
    let zero = g.scalar(0.0);
    let px = g.node("Max", &[&px, &zero], vec![]);
    let px = g.node("Min", &[&px, &scale], vec![]);
    (labels, tk[0].clone(), px)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn picks_top_scores_decodes_scales_and_clamps() {
        let dev = Device::flex();
        // 2 queries × 3 classes; logits chosen so the order is (q1,c2), (q0,c0), (q1,c0).
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![2.0f32, -5.0, -3.0, 1.0, -4.0, 3.0], [1, 2, 3]),
            &dev,
        );
        let boxes = Tensor::<3>::from_data(
            TensorData::new(vec![0.5f32, 0.5, 0.2, 0.4, 0.9, 0.1, 0.4, 0.2], [1, 2, 4]),
            &dev,
        );
        let d = postprocess(logits, boxes, &[[100, 200]], 3);
        let s: Vec<f32> = d.scores.into_data().try_to_vec().unwrap();
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        for (a, b) in s.iter().zip([sig(3.0), sig(2.0), sig(1.0)]) {
            assert!((a - b).abs() < 1e-6);
        }
        let l: Vec<i64> = d.labels.into_data().convert::<i64>().try_to_vec().unwrap();
        assert_eq!(l, vec![2, 0, 0]);
        let bx: Vec<f32> = d.boxes.into_data().try_to_vec().unwrap();
        // q1: cx .9 cy .1 w .4 h .2 on 200x100 → x 140..220 (clamped 200), y 0..20
        let want = [
            140.0, 0.0, 200.0, 20.0, 80.0, 30.0, 120.0, 70.0, 140.0, 0.0, 200.0, 20.0,
        ];
        for (a, b) in bx.iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "{bx:?}");
        }
    }
}
