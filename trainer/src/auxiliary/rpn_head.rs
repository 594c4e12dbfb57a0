//! The Faster-RCNN auxiliary head, part 1: the RPN on the adapter pyramid (a shared 3×3 conv,
//! objectness and deltas for 3 scales × 3 ratios per location), MaxIoU assignment
//! (0.7 / 0.3, low-quality matches), 256 random samples at 1:1, BCE + L1, and the proposals
//! (top-k per level, decode, per-level NMS) that the RoI head samples from. Training only.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::atss_assigner::DeltaCoder;
use super::rcnn_targets::{
    AssignedGt, MaxIouAssigner, anchors_per_location, batched_nms, random_sample, rpn_anchors,
};
use crate::loss::focal::bce_with_logits;
use crate::rng::Rng;

/// RPN settings (Co-DETR's Faster-RCNN branch, mmdet `rpn` / `rpn_proposal` train config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpnConfig {
    pub octave_base_scale: f32,
    pub scales_per_octave: usize,
    pub ratios: Vec<f32>,
    pub pos_iou: f32,
    pub neg_iou: f32,
    pub samples: usize,
    pub pos_fraction: f32,
    /// Proposals kept per level before NMS, and per image after it.
    pub pre_nms: usize,
    pub post_nms: usize,
    pub nms_iou: f32,
    pub cls_weight: f64,
    pub bbox_weight: f64,
}

impl Default for RpnConfig {
    fn default() -> Self {
        Self {
            octave_base_scale: 4.0,
            scales_per_octave: 3,
            ratios: vec![0.5, 1.0, 2.0],
            pos_iou: 0.7,
            neg_iou: 0.3,
            samples: 256,
            pos_fraction: 0.5,
            pre_nms: 4000,
            post_nms: 1000,
            nms_iou: 0.7,
            cls_weight: 1.0,
            bbox_weight: 1.0,
        }
    }
}

fn conv(cin: usize, cout: usize, k: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        })
        .init(device)
}

#[derive(Module, Debug)]
pub struct RpnHead {
    pub conv: Conv2d,
    /// `d → A` objectness logits
    pub cls: Conv2d,
    /// `d → 4A` deltas (anchor-major, 4 inner, like mmdet)
    pub reg: Conv2d,
    pub num_anchors: usize,
}

/// RPN outputs flattened over levels, locations (row-major) and anchors.
pub struct RpnOutput {
    /// `[B, N]`
    pub objectness: Tensor<2>,
    /// `[B, N, 4]`
    pub deltas: Tensor<3>,
}

impl RpnHead {
    pub fn new(d: usize, cfg: &RpnConfig, device: &Device) -> Self {
        let a = anchors_per_location(cfg.scales_per_octave, cfg.ratios.len());
        Self {
            conv: conv(d, d, 3, device),
            cls: conv(d, a, 1, device),
            reg: conv(d, 4 * a, 1, device),
            num_anchors: a,
        }
    }

    pub fn forward(&self, maps: &[Tensor<4>]) -> RpnOutput {
        let a = self.num_anchors;
        let mut obj = Vec::new();
        let mut del = Vec::new();
        for m in maps {
            let [b, _, h, w] = m.dims();
            let x = relu(self.conv.forward(m.clone()));
            obj.push(
                self.cls
                    .forward(x.clone())
                    .permute([0, 2, 3, 1])
                    .reshape([b, h * w * a]),
            );
            del.push(
                self.reg
                    .forward(x)
                    .permute([0, 2, 3, 1])
                    .reshape([b, h * w * a, 4]),
            );
        }
        RpnOutput {
            objectness: Tensor::cat(obj, 1),
            deltas: Tensor::cat(del, 1),
        }
    }
}

/// All RPN anchors of the pyramid (pixels) and the level of each.
pub fn pyramid_rpn_anchors(
    shapes: &[[usize; 2]],
    strides: &[usize],
    cfg: &RpnConfig,
) -> (Vec<[f32; 4]>, Vec<usize>) {
    let anchors = rpn_anchors(
        shapes,
        strides,
        cfg.octave_base_scale,
        cfg.scales_per_octave,
        &cfg.ratios,
    );
    let a = anchors_per_location(cfg.scales_per_octave, cfg.ratios.len());
    let level = shapes
        .iter()
        .enumerate()
        .flat_map(|(l, [h, w])| std::iter::repeat_n(l, h * w * a))
        .collect();
    (anchors, level)
}

/// The two RPN terms (each divided by the number of sampled anchors, as mmdet).
pub struct RpnLoss {
    pub cls: Tensor<1>,
    pub bbox: Tensor<1>,
}

/// Assigns and samples anchors for every image, returns the RPN loss.
pub fn rpn_loss(
    out: &RpnOutput,
    anchors: &[[f32; 4]],
    gts: &[Vec<[f32; 4]>],
    cfg: &RpnConfig,
    rng: &mut Rng,
) -> RpnLoss {
    let device = out.objectness.device();
    let [b, n] = out.objectness.dims();
    let assigner = MaxIouAssigner {
        pos_iou_thr: cfg.pos_iou,
        neg_iou_thr: cfg.neg_iou,
        min_pos_iou: cfg.neg_iou,
        match_low_quality: true,
    };
    let coder = DeltaCoder { stds: [1.0; 4] };
    let mut cls_idx = Vec::new();
    let mut cls_t = Vec::new();
    let mut pos_idx = Vec::new();
    let mut pos_t = Vec::new();
    for (i, g) in gts.iter().enumerate() {
        let a = assigner.assign(anchors, g);
        let s = random_sample(&a, cfg.samples, cfg.pos_fraction, &mut |k| rng.below(k));
        for &p in &s.pos {
            cls_idx.push((i * n + p) as i64);
            cls_t.push(1.0f32);
            if let AssignedGt::Positive(gi) = a.gt[p] {
                pos_idx.push((i * n + p) as i64);
                pos_t.extend(coder.encode(anchors[p], g[gi]));
            }
        }
        for &q in &s.neg {
            cls_idx.push((i * n + q) as i64);
            cls_t.push(0.0);
        }
    }
    let samples = cls_idx.len().max(1) as f64;
    let m = cls_idx.len();
    let cls = if m == 0 {
        out.objectness.clone().sum() * 0.0
    } else {
        let idx = Tensor::<1, Int>::from_data(TensorData::new(cls_idx, [m]), &device);
        let t = Tensor::<1>::from_data(TensorData::new(cls_t, [m]), &device);
        bce_with_logits(out.objectness.clone().reshape([b * n]).select(0, idx), t).sum() / samples
    };
    let p = pos_idx.len();
    let bbox = if p == 0 {
        out.deltas.clone().sum() * 0.0
    } else {
        let idx = Tensor::<1, Int>::from_data(TensorData::new(pos_idx, [p]), &device);
        let t = Tensor::<2>::from_data(TensorData::new(pos_t, [p, 4]), &device);
        (out.deltas.clone().reshape([b * n, 4]).select(0, idx) - t)
            .abs()
            .sum()
            / samples
    };
    RpnLoss { cls, bbox }
}

/// Proposals of every image (pixels, no gradient): per level the `pre_nms` best anchors by
/// objectness, decoded and clipped to the image, empty boxes dropped, NMS per level, the best
/// `post_nms` kept.
pub fn proposals(
    out: &RpnOutput,
    anchors: &[[f32; 4]],
    levels: &[usize],
    size: f32,
    cfg: &RpnConfig,
) -> crate::Result<Vec<Vec<[f32; 4]>>> {
    let [b, n] = out.objectness.dims();
    let host = |e: burn::tensor::DataError| crate::Error::InvalidArgument {
        what: "rpn output",
        message: format!("{e:?}"),
    };
    let obj: Vec<f32> = out
        .objectness
        .clone()
        .detach()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .map_err(host)?;
    let del: Vec<f32> = out
        .deltas
        .clone()
        .detach()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .map_err(host)?;
    let coder = DeltaCoder { stds: [1.0; 4] };
    let num_levels = levels.iter().copied().max().map_or(0, |m| m + 1);
    let mut all = Vec::with_capacity(b);
    for i in 0..b {
        let scores = &obj[i * n..(i + 1) * n];
        let mut boxes = Vec::new();
        let mut sc = Vec::new();
        let mut ids = Vec::new();
        for l in 0..num_levels {
            let mut idx: Vec<usize> = (0..n).filter(|&k| levels[k] == l).collect();
            idx.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]));
            idx.truncate(cfg.pre_nms);
            for k in idx {
                let d = [
                    del[(i * n + k) * 4],
                    del[(i * n + k) * 4 + 1],
                    del[(i * n + k) * 4 + 2],
                    del[(i * n + k) * 4 + 3],
                ];
                let bx = coder.decode(anchors[k], d).map(|v| v.clamp(0.0, size));
                if bx[2] > bx[0] && bx[3] > bx[1] {
                    boxes.push(bx);
                    sc.push(scores[k]);
                    ids.push(l);
                }
            }
        }
        let keep = batched_nms(&boxes, &sc, &ids, cfg.nms_iou);
        all.push(
            keep.into_iter()
                .take(cfg.post_nms)
                .map(|k| boxes[k])
                .collect(),
        );
    }
    Ok(all)
}
