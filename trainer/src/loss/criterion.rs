//! The DETR set losses: quality focal classification + L1 + GIoU on assigned predictions.
//! One-to-one (Hungarian-matched) for the decoder and encoder outputs; fixed assignments for
//! the denoising groups and the customized positive queries (no matching).

use burn::tensor::{Int, Tensor, TensorData};

use super::boxes::{cxcywh_to_xyxy, iou_giou_aligned};
use super::focal::quality_focal_sum;
use super::matcher::{MatchCosts, hungarian_match};
use crate::data::loader::Target;
use crate::error::{Error, Result};

/// Loss weights (Co-DINO: QFL 1, L1 5, GIoU 2).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    pub cls: f64,
    pub l1: f64,
    pub giou: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            cls: 1.0,
            l1: 5.0,
            giou: 2.0,
        }
    }
}

/// The three unweighted terms of one output (each already divided by its avg factor).
#[derive(Debug, Clone)]
pub struct Terms {
    pub cls: Tensor<1>,
    pub l1: Tensor<1>,
    pub giou: Tensor<1>,
}

impl Terms {
    pub fn weighted(&self, w: &LossWeights) -> Tensor<1> {
        self.cls.clone() * w.cls + self.l1.clone() * w.l1 + self.giou.clone() * w.giou
    }

    /// Host values `[cls, l1, giou]` for logging.
    pub fn values(&self) -> [f32; 3] {
        [&self.cls, &self.l1, &self.giou].map(|t| t.clone().into_scalar())
    }
}

/// One supervised prediction: query `query` of image `batch` must predict `label` at `bbox`
/// (normalised cxcywh).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Positive {
    pub batch: usize,
    pub query: usize,
    pub label: usize,
    pub bbox: [f32; 4],
}

fn host(t: Tensor<3>) -> Result<Vec<f32>> {
    t.detach()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .map_err(|e| Error::InvalidArgument {
            what: "loss input",
            message: format!("{e:?}"),
        })
}

/// Losses of `logits` `[B, Q, C]` / `boxes` `[B, Q, 4]` (sigmoid cxcywh) given the positives;
/// every other (query, class) is background. Divided by `max(#positives, 1)`, like the
/// official heads (`bg_cls_weight = 0`).
pub fn assigned_loss(logits: Tensor<3>, boxes: Tensor<3>, positives: &[Positive]) -> Terms {
    let device = logits.device();
    let [b, q, c] = logits.dims();
    let n = b * q;
    let avg = positives.len().max(1) as f64;
    let logits = logits.reshape([n, c]);
    if positives.is_empty() {
        let zeros = Tensor::<2>::zeros([n, c], &device);
        let zero = boxes.sum() * 0.0;
        return Terms {
            cls: quality_focal_sum(logits, zeros, 2.0) / avg,
            l1: zero.clone(),
            giou: zero,
        };
    }
    let p = positives.len();
    let idx: Vec<i64> = positives
        .iter()
        .map(|x| (x.batch * q + x.query) as i64)
        .collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [p]), &device);
    let pred = boxes.reshape([n, 4]).select(0, idx);
    let tgt: Vec<f32> = positives.iter().flat_map(|x| x.bbox).collect();
    let tgt = Tensor::<2>::from_data(TensorData::new(tgt, [p, 4]), &device);
    let tgt_xyxy = cxcywh_to_xyxy(tgt.clone());
    let (_, giou) = iou_giou_aligned(cxcywh_to_xyxy(pred.clone()), tgt_xyxy.clone());
    // The quality target: IoU of the (detached) prediction with its gt, at the gt class.
    let (iou, _) = iou_giou_aligned(cxcywh_to_xyxy(pred.clone().detach()), tgt_xyxy);
    // Dense target via a gather from [iou..., 0]: slot p (the appended zero) for background.
    let mut slot = vec![p as i64; n * c];
    for (k, x) in positives.iter().enumerate() {
        slot[(x.batch * q + x.query) * c + x.label] = k as i64;
    }
    let slot = Tensor::<1, Int>::from_data(TensorData::new(slot, [n * c]), &device);
    let table = Tensor::cat(vec![iou, Tensor::zeros([1], &device)], 0);
    let target = table.select(0, slot).reshape([n, c]);
    Terms {
        cls: quality_focal_sum(logits, target, 2.0) / avg,
        l1: (pred - tgt).abs().sum() / avg,
        giou: (giou.neg() + 1.0).sum() / avg,
    }
}

/// Hungarian-matches every image's predictions to its targets (on the host).
pub fn match_positives(
    logits: Tensor<3>,
    boxes: Tensor<3>,
    targets: &[Target],
    costs: &MatchCosts,
) -> Result<Vec<Positive>> {
    let [b, q, c] = logits.dims();
    if targets.len() != b {
        return Err(Error::InvalidArgument {
            what: "targets",
            message: format!("{} targets for a batch of {b}", targets.len()),
        });
    }
    let lh = host(logits)?;
    let bh = host(boxes)?;
    let mut out = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if t.labels.is_empty() {
            continue;
        }
        let gt: Vec<f32> = t.boxes.iter().flatten().copied().collect();
        let pairs = hungarian_match(
            &lh[i * q * c..(i + 1) * q * c],
            &bh[i * q * 4..(i + 1) * q * 4],
            q,
            c,
            &t.labels,
            &gt,
            costs,
        )
        .map_err(|e| Error::InvalidArgument {
            what: "matching",
            message: e.to_string(),
        })?;
        out.extend(pairs.into_iter().map(|(query, g)| Positive {
            batch: i,
            query,
            label: t.labels[g],
            bbox: t.boxes[g],
        }));
    }
    Ok(out)
}

/// Matching + losses for one output (a decoder layer or the encoder proposals).
pub fn matched_loss(
    logits: Tensor<3>,
    boxes: Tensor<3>,
    targets: &[Target],
    costs: &MatchCosts,
) -> Result<Terms> {
    let pos = match_positives(logits.clone(), boxes.clone(), targets, costs)?;
    Ok(assigned_loss(logits, boxes, &pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn perfect_prediction_has_zero_box_loss_and_iou_target() {
        let dev = Device::flex();
        // 1 image, 2 queries, 2 classes; query 1 predicts the gt box exactly.
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![-5.0f32, -5.0, -5.0, 5.0], [1, 2, 2]),
            &dev,
        );
        let boxes = Tensor::<3>::from_data(
            TensorData::new(vec![0.2f32, 0.2, 0.1, 0.1, 0.5, 0.5, 0.4, 0.2], [1, 2, 4]),
            &dev,
        );
        let t = Target {
            image_id: 0,
            orig_size: [10, 10],
            labels: vec![1],
            boxes: vec![[0.5, 0.5, 0.4, 0.2]],
        };
        let pos =
            match_positives(logits.clone(), boxes.clone(), &[t], &MatchCosts::default()).unwrap();
        assert_eq!(pos.len(), 1);
        assert_eq!(pos[0].query, 1);
        let terms = assigned_loss(logits, boxes, &pos);
        let [cls, l1, giou] = terms.values();
        assert!(l1.abs() < 1e-6 && giou.abs() < 1e-5, "{l1} {giou}");
        // QFL with target 1 at (q1, c1) where σ(5) ≈ 0.9933, plus 3 confident negatives.
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let bce = |x: f64, t: f64| x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
        let want =
            bce(5.0, 1.0) * (1.0 - sig(5.0)).powi(2) + 3.0 * bce(-5.0, 0.0) * sig(-5.0).powi(2);
        assert!((cls as f64 - want).abs() < 1e-6, "{cls} vs {want}");
    }
}
