//! The Faster-RCNN auxiliary head, part 2: RoIs sampled from the RPN proposals (+ the gts),
//! MaxIoU 0.5, 512 samples at 1:3, RoIAlign 7×7 (sampling ratio 0, aligned) on the encoder
//! levels with the level chosen by box scale, a shared 2-FC head, softmax CE and GIoU on the
//! decoded class-specific boxes. Its sampled RoIs, their targets and pooled features feed the
//! second group of positive queries. Training only.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Int, Tensor, TensorData};
use codetr_core::model::autocast as ac;
use codetr_core::model::rows::gather_rows;
use serde::{Deserialize, Serialize};

use super::rcnn_targets::{
    AssignedGt, MaxIouAssigner, random_sample, roi_level, with_gt_proposals,
};
use super::roi_align_plan::{Level, Roi, roi_align_plan};
use crate::error::{Error, Result};
use codetr_core::geometry::coder::{DeltaCoder, decode_deltas};
use codetr_core::geometry::tensor::iou_giou_aligned;
use codetr_data::rng::Rng;

/// RoI head settings (Co-DETR: MaxIoU 0.5, 512 samples at 0.25 positives, 7×7, 1024-d FCs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoiConfig {
    pub iou: f32,
    pub samples: usize,
    pub pos_fraction: f32,
    pub pool: usize,
    pub fc_dim: usize,
    /// mmdet's `finest_scale`: RoIs of side ≈ 56·2^l go to level l.
    pub finest_scale: f32,
    pub cls_weight: f64,
    pub bbox_weight: f64,
}

impl Default for RoiConfig {
    fn default() -> Self {
        Self {
            iou: 0.5,
            samples: 512,
            pos_fraction: 0.25,
            pool: 7,
            fc_dim: 1024,
            finest_scale: 56.0,
            cls_weight: 1.0,
            bbox_weight: 10.0,
        }
    }
}

#[derive(Module, Debug)]
pub struct RoiHead {
    /// `pool²·d → fc`
    pub fc1: Linear,
    pub fc2: Linear,
    /// `fc → C + 1` (the last is background)
    pub cls: Linear,
    /// `fc → 4C` class-specific deltas
    pub reg: Linear,
}

impl RoiHead {
    pub fn new(d: usize, num_classes: usize, cfg: &RoiConfig, device: &Device) -> Self {
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        Self {
            fc1: lin(cfg.pool * cfg.pool * d, cfg.fc_dim),
            fc2: lin(cfg.fc_dim, cfg.fc_dim),
            cls: lin(cfg.fc_dim, num_classes + 1),
            reg: lin(cfg.fc_dim, 4 * num_classes),
        }
    }
}

impl RoiHead {
    /// `feats`: `[R, pool·pool, d]` ([`roi_features`]) → class logits `[R, C + 1]` (background
    /// last) and class-specific deltas `[R, 4C]`.
    pub fn forward(&self, feats: Tensor<3>) -> (Tensor<2>, Tensor<2>) {
        let [r, pp, d] = feats.dims();
        let x = relu(ac::linear(
            &self.fc2,
            relu(ac::linear(&self.fc1, feats.reshape([r, pp * d]))),
        ));
        (ac::linear(&self.cls, x.clone()), ac::linear(&self.reg, x))
    }
}

/// The sampled RoIs of a batch with their targets.
pub struct RoiSamples {
    /// Per image: RoI boxes (pixels) — positives first, then negatives.
    pub boxes: Vec<Vec<[f32; 4]>>,
    /// Per image, per RoI: the assigned gt index (None = background).
    pub gt: Vec<Vec<Option<usize>>>,
}

/// Assigns and samples RoIs among `proposals` + the gts.
pub fn sample_rois(
    proposals: &[Vec<[f32; 4]>],
    gts: &[Vec<[f32; 4]>],
    cfg: &RoiConfig,
    rng: &mut Rng,
) -> RoiSamples {
    let assigner = MaxIouAssigner {
        pos_iou_thr: cfg.iou,
        neg_iou_thr: cfg.iou,
        min_pos_iou: cfg.iou,
        match_low_quality: false,
    };
    let mut boxes = Vec::new();
    let mut gt = Vec::new();
    for (p, g) in proposals.iter().zip(gts) {
        // mmdet: assign the proposals, then prepend each gt as a positive of itself.
        let cands = with_gt_proposals(p, g);
        let a = assigner.assign(p, g).with_gt_prepended(g.len());
        let s = random_sample(&a, cfg.samples, cfg.pos_fraction, &mut |k| rng.below(k));
        let mut bx = Vec::new();
        let mut gi = Vec::new();
        for &k in s.pos.iter().chain(&s.neg) {
            bx.push(cands[k]);
            gi.push(match a.gt[k] {
                AssignedGt::Positive(i) => Some(i),
                _ => None,
            });
        }
        boxes.push(bx);
        gt.push(gi);
    }
    RoiSamples { boxes, gt }
}

/// RoIAlign of every sampled RoI on the encoder levels → `[R, pool, pool, d]` flattened to
/// `[R, pool·pool, d]`. `memory`: `[B, S, d]`; `shapes`/`strides`: the encoder levels.
pub fn roi_features(
    memory: Tensor<3>,
    shapes: &[[usize; 2]],
    strides: &[usize],
    samples: &RoiSamples,
    cfg: &RoiConfig,
) -> Result<Tensor<3>> {
    let device = memory.device();
    let [b, s, d] = memory.dims();
    let mut levels = Vec::with_capacity(shapes.len());
    let mut start = 0;
    for (&[h, w], &st) in shapes.iter().zip(strides) {
        levels.push(Level {
            h,
            w,
            stride: st as f32,
            start,
        });
        start += h * w;
    }
    let rois: Vec<Roi> = samples
        .boxes
        .iter()
        .enumerate()
        .flat_map(|(i, bx)| {
            bx.iter().map(move |&bbox| Roi {
                batch: i,
                level: roi_level(bbox, cfg.finest_scale, shapes.len()),
                bbox,
            })
        })
        .collect();
    let r = rois.len();
    let plan = roi_align_plan(&rois, &levels, s, cfg.pool, 0, true).map_err(|e| {
        Error::InvalidArgument {
            what: "roi align",
            message: e.to_string(),
        }
    })?;
    let n = plan.index.len();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(plan.index, [n]), &device);
    let wts = Tensor::<1>::from_data(TensorData::new(plan.weight, [n]), &device).reshape([n, 1]);
    let pp = cfg.pool * cfg.pool;
    let taps = gather_rows(memory.reshape([b * s, d]), idx) * wts;
    Ok(taps
        .reshape([r * pp, plan.taps, d])
        .sum_dim(1)
        .reshape([r, pp, d]))
}

/// The RoI head's two terms (each divided by the number of sampled RoIs, as mmdet's BBoxHead).
pub struct RoiLoss {
    pub cls: Tensor<1>,
    pub bbox: Tensor<1>,
}

/// Classification and box losses of the sampled RoIs.
pub fn roi_loss(
    head: &RoiHead,
    feats: Tensor<3>,
    samples: &RoiSamples,
    labels: &[&[usize]],
    gts: &[Vec<[f32; 4]>],
) -> RoiLoss {
    let device = feats.device();
    let r = feats.dims()[0];
    let c = head.reg.weight.dims()[1] / 4;
    let (logits, deltas) = head.forward(feats);
    let mut target = Vec::with_capacity(r);
    let mut pos_rows = Vec::new();
    let mut pos_boxes = Vec::new();
    let mut pos_gt = Vec::new();
    let mut row = 0usize;
    for (i, g) in samples.gt.iter().enumerate() {
        for (k, a) in g.iter().enumerate() {
            match a {
                Some(gi) => {
                    let l = labels[i][*gi];
                    target.push(l as i64);
                    // the 4 delta columns of the gt class
                    for j in 0..4 {
                        pos_rows.push((row * 4 * c + l * 4 + j) as i64);
                    }
                    pos_boxes.extend(samples.boxes[i][k]);
                    pos_gt.extend(gts[i][*gi]);
                }
                None => target.push(c as i64),
            }
            row += 1;
        }
    }
    let avg = r.max(1) as f64;
    let t = Tensor::<1, Int>::from_data(TensorData::new(target, [r]), &device).reshape([r, 1]);
    let cls = log_softmax(logits, 1).gather(1, t).sum().neg() / avg;
    let p = pos_gt.len() / 4;
    let bbox = if p == 0 {
        deltas.sum() * 0.0
    } else {
        let idx = Tensor::<1, Int>::from_data(TensorData::new(pos_rows, [p * 4]), &device);
        let dl = deltas.reshape([r * 4 * c]).select(0, idx).reshape([p, 4]);
        let anc = Tensor::<2>::from_data(TensorData::new(pos_boxes, [p, 4]), &device);
        let gt = Tensor::<2>::from_data(TensorData::new(pos_gt, [p, 4]), &device);
        let pred = decode_deltas(anc, dl, &DeltaCoder::default());
        let (_, giou) = iou_giou_aligned(pred, gt);
        (giou.neg() + 1.0).sum() / avg
    };
    RoiLoss { cls, bbox }
}
