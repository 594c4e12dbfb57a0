//! The ATSS auxiliary head (one-to-many, paper §3.2): a shared 1-conv tower per branch on every
//! level of the adapter pyramid, one square anchor per location (octave scale 8), ATSS
//! assignment (top-9 per level by centre distance, IoU ≥ mean + std, centre inside the gt),
//! sigmoid focal classification, GIoU regression weighted by centerness, centerness BCE.
//! Its positives (anchor boxes, their gt, their pyramid features) feed the positive queries.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use codetr_core::model::autocast as ac;

use super::atss_assigner::{atss_assign, centerness_target};
use crate::loss::focal::{bce_with_logits, sigmoid_focal_sum, sigmoid_focal_weighted_sum};
use codetr_core::geometry::anchors::square_anchors;
use codetr_core::geometry::coder::{DeltaCoder, decode_deltas};
use codetr_core::geometry::tensor::iou_giou_aligned;
use codetr_core::model::detector::prior_bias;
use codetr_data::loader::Target;

/// ATSS settings (Co-DETR: octave scale 8, top-9, 1 stacked conv).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtssConfig {
    pub octave_base_scale: f32,
    pub topk: usize,
    /// Loss weights before the λ2 scaling: focal, GIoU, centerness.
    pub cls_weight: f64,
    pub bbox_weight: f64,
    pub centerness_weight: f64,
}

impl Default for AtssConfig {
    fn default() -> Self {
        Self {
            octave_base_scale: 8.0,
            topk: 9,
            cls_weight: 1.0,
            bbox_weight: 2.0,
            centerness_weight: 1.0,
        }
    }
}

fn conv3(cin: usize, cout: usize, device: &Device) -> Conv2d {
    // mmdet normal_init(std=0.01) for the ATSS head.
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        })
        .init(device)
}

#[derive(Module, Debug)]
pub struct AtssHead {
    pub cls_conv: Conv2d,
    pub cls_gn: GroupNorm,
    pub reg_conv: Conv2d,
    pub reg_gn: GroupNorm,
    /// `d → C`
    pub cls_out: Conv2d,
    /// `d → 4` (deltas)
    pub reg_out: Conv2d,
    /// `d → 1`
    pub ctr_out: Conv2d,
    /// `[levels]` learnable scale of each level's deltas.
    pub scales: Param<Tensor<1>>,
}

/// Flattened predictions over all levels.
pub struct AtssOutput {
    /// `[B, A, C]`
    pub cls: Tensor<3>,
    /// `[B, A, 4]` deltas
    pub reg: Tensor<3>,
    /// `[B, A]` centerness logits
    pub ctr: Tensor<2>,
}

/// One image's positive anchors, for the loss and the positive queries.
#[derive(Debug, Clone, PartialEq)]
pub struct AtssPositives {
    /// Per image: (anchor index, gt index).
    pub pairs: Vec<Vec<(usize, usize)>>,
}

impl AtssHead {
    pub fn new(d: usize, num_classes: usize, levels: usize, device: &Device) -> Self {
        let mut cls_out = conv3(d, num_classes, device);
        cls_out.bias = Some(Param::from_tensor(Tensor::full(
            [num_classes],
            prior_bias(0.01),
            device,
        )));
        Self {
            cls_conv: conv3(d, d, device),
            cls_gn: GroupNormConfig::new(32, d).init(device),
            reg_conv: conv3(d, d, device),
            reg_gn: GroupNormConfig::new(32, d).init(device),
            cls_out,
            reg_out: conv3(d, 4, device),
            ctr_out: conv3(d, 1, device),
            scales: Param::from_tensor(Tensor::ones([levels], device)),
        }
    }

    /// `maps`: `L` pyramid maps `[B, d, h, w]`.
    pub fn forward(&self, maps: &[Tensor<4>]) -> AtssOutput {
        let mut cls = Vec::new();
        let mut reg = Vec::new();
        let mut ctr = Vec::new();
        for (l, m) in maps.iter().enumerate() {
            let [b, _, h, w] = m.dims();
            let c = relu(self.cls_gn.forward(ac::conv2d(&self.cls_conv, m.clone())));
            let r = relu(self.reg_gn.forward(ac::conv2d(&self.reg_conv, m.clone())));
            let flat = |x: Tensor<4>, k: usize| x.reshape([b, k, h * w]).swap_dims(1, 2);
            let nc = self.cls_out.weight.dims()[0];
            cls.push(flat(ac::conv2d(&self.cls_out, c), nc));
            let scale = self.scales.val().narrow(0, l, 1).reshape([1, 1, 1, 1]);
            reg.push(flat(ac::conv2d(&self.reg_out, r.clone()) * scale, 4));
            ctr.push(ac::conv2d(&self.ctr_out, r).reshape([b, h * w]));
        }
        AtssOutput {
            cls: Tensor::cat(cls, 1),
            reg: Tensor::cat(reg, 1),
            ctr: Tensor::cat(ctr, 1),
        }
    }
}

/// All anchors (pixels, xyxy) of the pyramid and the count per level.
pub fn pyramid_anchors(
    shapes: &[[usize; 2]],
    strides: &[usize],
    cfg: &AtssConfig,
) -> (Vec<[f32; 4]>, Vec<usize>) {
    let per: Vec<usize> = shapes.iter().map(|[h, w]| h * w).collect();
    (square_anchors(shapes, strides, cfg.octave_base_scale), per)
}

/// Targets' normalised cxcywh boxes → pixel xyxy, the boxes being normalised by the image's
/// `[h, w]` region of the canvas (the whole square under stretch).
pub fn gt_pixels(t: &Target, [h, w]: [f32; 2]) -> Vec<[f32; 4]> {
    t.boxes
        .iter()
        .map(|[cx, cy, bw, bh]| {
            [
                (cx - bw / 2.0) * w,
                (cy - bh / 2.0) * h,
                (cx + bw / 2.0) * w,
                (cy + bh / 2.0) * h,
            ]
        })
        .collect()
}

/// ATSS assignment of every image: `gts` in pixels; `inside[i]`, image i's valid anchors
/// (`None`: all, the image fills the canvas). As mmdet, an image's assignment runs on its
/// valid anchors only (top-k per level among them).
pub fn assign(
    anchors: &[[f32; 4]],
    per_level: &[usize],
    gts: &[Vec<[f32; 4]>],
    inside: &[Option<Vec<bool>>],
    cfg: &AtssConfig,
) -> AtssPositives {
    let pairs = gts
        .iter()
        .zip(inside)
        .map(|(g, flags)| {
            let Some(flags) = flags else {
                let a = atss_assign(anchors, per_level, g, cfg.topk);
                return a
                    .gt
                    .iter()
                    .enumerate()
                    .filter_map(|(i, g)| g.map(|g| (i, g)))
                    .collect();
            };
            let keep: Vec<usize> = (0..anchors.len()).filter(|&i| flags[i]).collect();
            let sub: Vec<[f32; 4]> = keep.iter().map(|&i| anchors[i]).collect();
            let mut sub_per_level = Vec::with_capacity(per_level.len());
            let mut start = 0;
            for &n in per_level {
                sub_per_level.push(flags[start..start + n].iter().filter(|&&v| v).count());
                start += n;
            }
            let a = atss_assign(&sub, &sub_per_level, g, cfg.topk);
            a.gt.iter()
                .enumerate()
                .filter_map(|(i, gi)| gi.map(|gi| (keep[i], gi)))
                .collect()
        })
        .collect();
    AtssPositives { pairs }
}

/// The three ATSS terms, each divided by its avg factor as in mmdet's ATSSHead.
pub struct AtssLoss {
    pub cls: Tensor<1>,
    pub bbox: Tensor<1>,
    pub centerness: Tensor<1>,
}

/// ATSS loss of `out` given the assignment: `gts` in pixels; `inside` as [`assign`]'s (an
/// anchor outside its image takes no part in the classification term either).
pub fn atss_loss(
    out: &AtssOutput,
    anchors: &[[f32; 4]],
    positives: &AtssPositives,
    targets: &[Target],
    gts: &[Vec<[f32; 4]>],
    inside: &[Option<Vec<bool>>],
) -> AtssLoss {
    let device = out.cls.device();
    let [b, a, c] = out.cls.dims();
    let mut hot = Vec::new();
    let mut idx = Vec::new();
    let mut anc = Vec::new();
    let mut gt = Vec::new();
    let mut ctr_t = Vec::new();
    for (i, ((pairs, t), gts)) in positives.pairs.iter().zip(targets).zip(gts).enumerate() {
        for &(ai, gi) in pairs {
            hot.push(((i * a + ai) * c + t.labels[gi]) as i64);
            idx.push((i * a + ai) as i64);
            anc.extend(anchors[ai]);
            gt.extend(gts[gi]);
            ctr_t.push(centerness_target(anchors[ai], gts[gi]));
        }
    }
    let p = idx.len();
    let num_pos = p.max(1) as f64;
    // One-hot targets made on the device from the P flat positions (an anchor has at most one
    // gt): the `[B·A, C]` table (5.7 MB per 800² image) never crosses the bus.
    let mut onehot = Tensor::<1>::zeros([b * a * c], &device);
    if p > 0 {
        let hot = Tensor::<1, Int>::from_data(TensorData::new(hot, [p]), &device);
        onehot = onehot.select_assign(0, hot, Tensor::ones([p], &device), IndexingUpdateOp::Add);
    }
    let onehot = onehot.reshape([b * a, c]);
    let logits = out.cls.clone().reshape([b * a, c]);
    let cls = if inside.iter().all(Option::is_none) {
        sigmoid_focal_sum(logits, onehot, 0.25, 2.0) / num_pos
    } else {
        let w: Vec<f32> = inside
            .iter()
            .flat_map(|f| match f {
                Some(f) => f.iter().map(|&v| f32::from(u8::from(v))).collect(),
                None => vec![1.0; a],
            })
            .collect();
        let w = Tensor::<2>::from_data(TensorData::new(w, [b * a, 1]), &device);
        sigmoid_focal_weighted_sum(logits, onehot, w, 0.25, 2.0) / num_pos
    };
    if p == 0 {
        let zero = out.reg.clone().sum() * 0.0 + out.ctr.clone().sum() * 0.0;
        return AtssLoss {
            cls,
            bbox: zero.clone(),
            centerness: zero,
        };
    }
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [p]), &device);
    let deltas = out.reg.clone().reshape([b * a, 4]).select(0, idx.clone());
    let ctr_logit = out.ctr.clone().reshape([b * a]).select(0, idx);
    let anc = Tensor::<2>::from_data(TensorData::new(anc, [p, 4]), &device);
    let gt = Tensor::<2>::from_data(TensorData::new(gt, [p, 4]), &device);
    let ctr_sum: f32 = ctr_t.iter().sum();
    let ctr_t = Tensor::<1>::from_data(TensorData::new(ctr_t, [p]), &device);
    let pred = decode_deltas(anc, deltas, &DeltaCoder::default());
    let (_, giou) = iou_giou_aligned(pred, gt);
    // GIoU weighted by the centerness target, divided by its sum clamped at 1 (mmdet
    // ATSSHead's `bbox_avg_factor.clamp_(min=1)`): a batch whose few positives sit near gt
    // edges is down-weighted instead of renormalised to a full-weight average.
    let bbox = ((giou.neg() + 1.0) * ctr_t.clone()).sum() / f64::from(ctr_sum.max(1.0));
    let centerness = bce_with_logits(ctr_logit, ctr_t).sum() / num_pos;
    AtssLoss {
        cls,
        bbox,
        centerness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codetr_core::geometry::anchors::valid_anchor_flags;

    /// An image of 50 × 30 pixels in a 64² canvas: its assignment on the canvas pyramid's valid
    /// anchors is the assignment on the pyramid of its own region (the same anchors), and the
    /// classification term does not see the logits of the anchors over the padding.
    #[test]
    fn an_image_region_assigns_and_scores_only_its_own_anchors() {
        // anchors of 16 and 32 pixels, so the gts' IoUs vary across candidates
        let cfg = AtssConfig {
            topk: 3,
            octave_base_scale: 2.0,
            ..AtssConfig::default()
        };
        let (canvas, strides) = ([[8, 8], [4, 4]], [8, 16]);
        let (anchors, per_level) = pyramid_anchors(&canvas, &strides, &cfg);
        let flags = valid_anchor_flags(&canvas, &strides, 1, [50.0, 30.0]);
        let gts = vec![vec![[2.0, 5.0, 28.0, 45.0], [14.0, 20.0, 30.0, 49.0]]];
        let got = assign(&anchors, &per_level, &gts, &[Some(flags.clone())], &cfg);
        let (own, own_per_level) = pyramid_anchors(&[[7, 4], [4, 2]], &strides, &cfg);
        let want = assign(&own, &own_per_level, &gts, &[None], &cfg);
        let boxes = |p: &AtssPositives, a: &[[f32; 4]]| -> Vec<([f32; 4], usize)> {
            p.pairs[0].iter().map(|&(ai, gi)| (a[ai], gi)).collect()
        };
        assert!(!want.pairs[0].is_empty());
        assert_eq!(boxes(&got, &anchors), boxes(&want, &own));
        assert!(got.pairs[0].iter().all(|&(ai, _)| flags[ai]));

        let device = Device::flex();
        let n = anchors.len();
        let t = Target {
            image_id: 1,
            orig_size: [50, 30],
            labels: vec![0, 1],
            boxes: vec![],
        };
        let cls_loss = |outside: f32| {
            let cls: Vec<f32> = (0..n * 2)
                .map(|k| {
                    if flags[k / 2] {
                        0.3 - (k % 5) as f32 * 0.2
                    } else {
                        outside
                    }
                })
                .collect();
            let out = AtssOutput {
                cls: Tensor::from_data(TensorData::new(cls, [1, n, 2]), &device),
                reg: Tensor::zeros([1, n, 4], &device),
                ctr: Tensor::zeros([1, n], &device),
            };
            let l = atss_loss(
                &out,
                &anchors,
                &got,
                std::slice::from_ref(&t),
                &gts,
                &[Some(flags.clone())],
            );
            l.cls.into_scalar::<f32>()
        };
        assert_eq!(cls_loss(-3.0), cls_loss(5.0));
    }

    /// One positive whose centerness target is below 1: the GIoU term is divided by the
    /// centerness sum clamped at 1 (mmdet), so it is (1 − GIoU) × centerness, not (1 − GIoU).
    #[test]
    fn bbox_term_is_divided_by_the_centerness_sum_clamped_at_one() {
        let device = Device::flex();
        let (a, c) = (2, 3);
        let out = AtssOutput {
            cls: Tensor::<3>::zeros([1, a, c], &device),
            // zero deltas: the prediction is the anchor itself
            reg: Tensor::<3>::zeros([1, a, 4], &device),
            ctr: Tensor::<2>::zeros([1, a], &device),
        };
        let anchors = [[0.0, 0.0, 40.0, 40.0], [40.0, 40.0, 80.0, 80.0]];
        // gt [4, 4, 36, 22] in pixels of a 100-px image; the anchor centre (20, 20) is near its
        // bottom edge, so the centerness target is well below 1
        let t = Target {
            image_id: 1,
            orig_size: [100, 100],
            labels: vec![2],
            boxes: vec![[0.20, 0.13, 0.32, 0.18]],
        };
        let pos = AtssPositives {
            pairs: vec![vec![(0, 0)]],
        };
        let gts = vec![gt_pixels(&t, [100.0, 100.0])];
        let loss = atss_loss(
            &out,
            &anchors,
            &pos,
            std::slice::from_ref(&t),
            &gts,
            &[None],
        );
        let gt = gts[0][0];
        let ctr = centerness_target(anchors[0], gt);
        assert!(
            ctr < 0.5,
            "the case needs a small centerness target, got {ctr}"
        );
        // GIoU by hand: the gt lies inside the anchor, so the enclosing box is the anchor
        let inter = (gt[2] - gt[0]) * (gt[3] - gt[1]);
        let giou = inter / (40.0 * 40.0);
        let want = (1.0 - giou) * ctr;
        let got: f32 = loss.bbox.into_scalar();
        assert!((got - want).abs() < 1e-5, "bbox {got}, want {want}");
    }
}
