//! The DETR set losses: quality focal classification + L1 + GIoU on assigned predictions.
//! One-to-one (Hungarian-matched) for the decoder and encoder outputs; fixed assignments for
//! the denoising groups and the customized positive queries (no matching).

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::focal::quality_focal_sum;
use super::matcher::{MatchCosts, MatchError, match_label_logits};
use crate::error::{Error, Result};
use codetr_core::geometry::tensor::{cxcywh_to_xyxy, iou_giou_aligned};
use codetr_data::loader::Target;

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

    /// Host values `[cls, l1, giou]`, in one read.
    pub fn values(&self) -> Result<[f32; 3]> {
        let t = Tensor::cat(
            vec![self.cls.clone(), self.l1.clone(), self.giou.clone()],
            0,
        );
        let v = crate::host::read_f32(t, "loss terms")?;
        Ok([v[0], v[1], v[2]])
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

/// Losses of `logits` `[B, Q, C]` / `boxes` `[B, Q, 4]` (sigmoid cxcywh) given the positives;
/// every other (query, class) is background. Divided by `max(#positives, 1)`, like the
/// official heads (`bg_cls_weight = 0`). Positives name distinct (query, label) pairs (every
/// caller gives a query at most one target).
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
    // Dense target: each positive's IoU scattered into a zero `[N·C]` at its (query, label).
    // Only the P flat positions travel to the device, not an `[N, C]` table.
    let at: Vec<i64> = positives
        .iter()
        .map(|x| ((x.batch * q + x.query) * c + x.label) as i64)
        .collect();
    let at = Tensor::<1, Int>::from_data(TensorData::new(at, [p]), &device);
    let target = Tensor::<1>::zeros([n * c], &device)
        .select_assign(0, at, iou, IndexingUpdateOp::Add)
        .reshape([n, c]);
    Terms {
        cls: quality_focal_sum(logits, target, 2.0) / avg,
        l1: (pred - tgt).abs().sum() / avg,
        giou: (giou.neg() + 1.0).sum() / avg,
    }
}

/// Hungarian-matches every image's predictions to its targets. The costs are computed and
/// solved on the host in f64, but only what they need is read back, in one read:
/// `[B, Q, U + 4]`, the logits of the U distinct gt labels of the batch and the boxes; not the
/// `[B, Q, C]` logits (U ≤ min(C, #gt)).
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
    let invalid = |e: MatchError| Error::InvalidArgument {
        what: "matching",
        message: e.to_string(),
    };
    // column[label]: where that label's logits sit in the read, for the labels present
    let mut column = vec![None; c];
    let mut present = Vec::new();
    for t in targets {
        for (gt, &label) in t.labels.iter().enumerate() {
            let slot = column.get_mut(label).ok_or_else(|| {
                invalid(MatchError::LabelOutOfRange {
                    gt,
                    label,
                    num_classes: c,
                })
            })?;
            if slot.is_none() {
                *slot = Some(present.len());
                present.push(label as i64);
            }
        }
    }
    let u = present.len();
    if u == 0 || q == 0 {
        return Ok(Vec::new());
    }
    let device = logits.device();
    let present = Tensor::<1, Int>::from_data(TensorData::new(present, [u]), &device);
    let w = u + 4;
    let read = crate::host::read_f32(
        Tensor::cat(vec![logits.select(2, present), boxes], 2),
        "matcher inputs",
    )?;
    let mut out = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let g = t.labels.len();
        if g == 0 {
            continue;
        }
        let rows = &read[i * q * w..(i + 1) * q * w];
        let cols: Vec<usize> = t.labels.iter().filter_map(|&l| column[l]).collect();
        let label_logits: Vec<f32> = rows
            .chunks_exact(w)
            .flat_map(|r| cols.iter().map(move |&k| r[k]))
            .collect();
        let pred: Vec<f32> = rows
            .chunks_exact(w)
            .flat_map(|r| &r[u..])
            .copied()
            .collect();
        let gt: Vec<f32> = t.boxes.iter().flatten().copied().collect();
        let pairs = match_label_logits(&label_logits, &pred, q, &gt, costs).map_err(invalid)?;
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
        let [cls, l1, giou] = terms.values().unwrap();
        assert!(l1.abs() < 1e-6 && giou.abs() < 1e-5, "{l1} {giou}");
        // QFL with target 1 at (q1, c1) where σ(5) ≈ 0.9933, plus 3 confident negatives.
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let bce = |x: f64, t: f64| x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
        let want =
            bce(5.0, 1.0) * (1.0 - sig(5.0)).powi(2) + 3.0 * bce(-5.0, 0.0) * sig(-5.0).powi(2);
        assert!((cls as f64 - want).abs() < 1e-6, "{cls} vs {want}");
    }

    /// The device-side selection reads `[B, Q, U + 4]` once (U: distinct gt labels) and gives
    /// exactly the pairs the full-logits host matcher gives, image by image (images without
    /// objects included).
    #[test]
    fn device_gathered_matching_equals_the_host_matcher() {
        use crate::loss::matcher::hungarian_match;
        use codetr_data::rng::Rng;
        let dev = Device::flex();
        let mut r = Rng::new(11);
        let (b, q, c) = (4, 9, 6);
        let counts = [3usize, 0, 5, 1];
        for _ in 0..5 {
            let logits: Vec<f32> = (0..b * q * c).map(|_| r.f32() * 8.0 - 4.0).collect();
            let boxes: Vec<f32> = (0..b * q * 4).map(|_| 0.1 + r.f32() * 0.8).collect();
            let targets: Vec<Target> = counts
                .iter()
                .enumerate()
                .map(|(i, &n)| Target {
                    image_id: i as u64,
                    orig_size: [10, 10],
                    labels: (0..n).map(|_| r.below(c)).collect(),
                    boxes: (0..n)
                        .map(|_| [0.2 + r.f32() * 0.6, 0.2 + r.f32() * 0.6, 0.2, 0.3])
                        .collect(),
                })
                .collect();
            let lt = Tensor::<3>::from_data(TensorData::new(logits.clone(), [b, q, c]), &dev);
            let bt = Tensor::<3>::from_data(TensorData::new(boxes.clone(), [b, q, 4]), &dev);
            crate::host::reset();
            let got = match_positives(lt, bt, &targets, &MatchCosts::default()).unwrap();
            let reads = crate::host::snapshot();
            let mut u: Vec<usize> = targets.iter().flat_map(|t| t.labels.clone()).collect();
            u.sort_unstable();
            u.dedup();
            let bytes = (b * q * (u.len() + 4) * 4) as u64;
            assert_eq!((reads.reads, reads.bytes), (1, bytes));
            let mut want = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                let gt: Vec<f32> = t.boxes.iter().flatten().copied().collect();
                let pairs = hungarian_match(
                    &logits[i * q * c..(i + 1) * q * c],
                    &boxes[i * q * 4..(i + 1) * q * 4],
                    q,
                    c,
                    &t.labels,
                    &gt,
                    &MatchCosts::default(),
                )
                .unwrap();
                want.extend(pairs.into_iter().map(|(query, g)| (i, query, g)));
            }
            let got: Vec<(usize, usize, usize)> = got
                .iter()
                .map(|p| {
                    let t = &targets[p.batch];
                    let g = t.boxes.iter().position(|bx| *bx == p.bbox).unwrap();
                    assert_eq!(p.label, t.labels[g]);
                    (p.batch, p.query, g)
                })
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn matching_refuses_a_label_out_of_range() {
        let dev = Device::flex();
        let logits = Tensor::<3>::zeros([1, 2, 3], &dev);
        let boxes = Tensor::<3>::zeros([1, 2, 4], &dev) + 0.5;
        let t = Target {
            image_id: 0,
            orig_size: [10, 10],
            labels: vec![3],
            boxes: vec![[0.5, 0.5, 0.2, 0.2]],
        };
        let e = match_positives(logits, boxes, &[t], &MatchCosts::default()).unwrap_err();
        assert!(e.to_string().contains("label 3"), "{e}");
    }
}
