//! The Faster-RCNN auxiliary head, part 1: the RPN on the adapter pyramid (a shared 3×3 conv,
//! objectness and deltas for 3 scales × 3 ratios per location), MaxIoU assignment
//! (0.7 / 0.3, low-quality matches), 256 random samples at 1:1, BCE + L1, and the proposals
//! (top-k per level, decode, per-level NMS) that the RoI head samples from. Training only.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use codetr_core::model::autocast as ac;
use serde::{Deserialize, Serialize};

use super::rcnn_targets::{AssignedGt, MaxIouAssigner, batched_nms, random_sample};
use crate::error::Error;
use crate::loss::focal::bce_with_logits;
use codetr_core::geometry::anchors::{anchors_per_location, generate_anchors};
use codetr_core::geometry::coder::DeltaCoder;
use codetr_data::rng::Rng;

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
            let x = relu(ac::conv2d(&self.conv, m.clone()));
            obj.push(
                ac::conv2d(&self.cls, x.clone())
                    .permute([0, 2, 3, 1])
                    .reshape([b, h * w * a]),
            );
            del.push(
                ac::conv2d(&self.reg, x)
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
    let anchors = generate_anchors(
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

/// Assigns and samples anchors for every image, returns the RPN loss. `inside[i]`: image i's
/// valid anchors (`None`: all); as mmdet, only those are assigned and sampled.
pub fn rpn_loss(
    out: &RpnOutput,
    anchors: &[[f32; 4]],
    gts: &[Vec<[f32; 4]>],
    inside: &[Option<Vec<bool>>],
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
    for (i, (g, flags)) in gts.iter().zip(inside).enumerate() {
        // The image's anchors: all, or its valid ones (`keep` maps back to the pyramid's).
        let keep: Option<Vec<usize>> = flags
            .as_ref()
            .map(|f| (0..anchors.len()).filter(|&k| f[k]).collect());
        let sub: Vec<[f32; 4]>;
        let own: &[[f32; 4]] = match &keep {
            Some(k) => {
                sub = k.iter().map(|&j| anchors[j]).collect();
                &sub
            }
            None => anchors,
        };
        let global = |j: usize| keep.as_ref().map_or(j, |k| k[j]);
        let a = assigner.assign(own, g);
        let s = random_sample(&a, cfg.samples, cfg.pos_fraction, &mut |k| rng.below(k));
        for &p in &s.pos {
            cls_idx.push((i * n + global(p)) as i64);
            cls_t.push(1.0f32);
            if let AssignedGt::Positive(gi) = a.gt[p] {
                pos_idx.push((i * n + global(p)) as i64);
                pos_t.extend(coder.encode(own[p], g[gi]));
            }
        }
        for &q in &s.neg {
            cls_idx.push((i * n + global(q)) as i64);
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
/// objectness (ties by lower index), decoded and clipped to the image's `valid` `[h, w]`
/// region, empty boxes dropped, NMS per level, the best `post_nms` kept.
///
/// The top-k runs on the device; one read brings back, per image and level, the k scores,
/// their anchor indices and deltas, and two checks: how many scores reach the k-th (more than
/// k: a tie at the cut) and whether any is NaN. Either sends that image's level down the exact
/// host path (its full scores read back), so the result is the host sort's in every case. At
/// 800² (about 160k anchors, `pre_nms` 4000) the read is ~0.35 MB per image instead of 3.2 MB.
pub fn proposals(
    out: &RpnOutput,
    anchors: &[[f32; 4]],
    levels: &[usize],
    valid: &[[f32; 2]],
    cfg: &RpnConfig,
) -> crate::Result<Vec<Vec<[f32; 4]>>> {
    let [b, n] = out.objectness.dims();
    let ranges = level_ranges(levels, n)?;
    let obj = out.objectness.clone().detach();
    let del = out.deltas.clone().detach();
    // Per level: [B, 6k + 2] = k scores, k indices, 4k deltas, #(≥ k-th score), #NaN.
    let mut parts = Vec::new();
    let mut width = 0;
    for &(start, len) in &ranges {
        let k = cfg.pre_nms.min(len);
        if k == 0 {
            continue;
        }
        let scores = obj.clone().narrow(1, start, len);
        let (top, idx) = scores.clone().topk_with_indices(k, 1);
        let deltas = del
            .clone()
            .narrow(1, start, len)
            .gather(1, idx.clone().reshape([b, k, 1]).expand([b, k, 4]));
        let kth = top.clone().narrow(1, k - 1, 1).expand([b, len]);
        let reach = scores.clone().greater_equal(kth).int().sum_dim(1).float();
        let nan = scores.is_nan().int().sum_dim(1).float();
        parts.push(Tensor::cat(
            vec![top, idx.float(), deltas.reshape([b, 4 * k]), reach, nan],
            1,
        ));
        width += 6 * k + 2;
    }
    let read = if parts.is_empty() {
        Vec::new()
    } else {
        crate::host::read_f32(Tensor::cat(parts, 1), "rpn top-k")?
    };
    let coder = DeltaCoder { stds: [1.0; 4] };
    let mut all = Vec::with_capacity(b);
    for i in 0..b {
        let [vh, vw] = valid
            .get(i)
            .copied()
            .ok_or_else(|| Error::InvalidArgument {
                what: "proposals",
                message: format!("{} valid sizes for a batch of {b}", valid.len()),
            })?;
        let mut boxes = Vec::new();
        let mut sc = Vec::new();
        let mut ids = Vec::new();
        let mut at = i * width;
        for (l, &(start, len)) in ranges.iter().enumerate() {
            let k = cfg.pre_nms.min(len);
            if k == 0 {
                continue;
            }
            let row = &read[at..at + 6 * k + 2];
            at += 6 * k + 2;
            let (reach, nan) = (row[6 * k], row[6 * k + 1]);
            let cands = if reach as usize == k && nan == 0.0 {
                let mut c: Vec<Candidate> = (0..k)
                    .map(|j| Candidate {
                        index: row[k + j] as usize,
                        score: row[j],
                        deltas: [0, 1, 2, 3].map(|e| row[2 * k + 4 * j + e]),
                    })
                    .collect();
                c.sort_by(|x, y| y.score.total_cmp(&x.score).then(x.index.cmp(&y.index)));
                c
            } else {
                let scores = crate::host::read_f32(
                    obj.clone().narrow(0, i, 1).narrow(1, start, len),
                    "rpn objectness",
                )?;
                let deltas = crate::host::read_f32(
                    del.clone().narrow(0, i, 1).narrow(1, start, len),
                    "rpn deltas",
                )?;
                host_top_k(&scores, &deltas, k)
            };
            for c in cands {
                let d = coder.decode(anchors[start + c.index], c.deltas);
                let bx = [
                    d[0].clamp(0.0, vw),
                    d[1].clamp(0.0, vh),
                    d[2].clamp(0.0, vw),
                    d[3].clamp(0.0, vh),
                ];
                if bx[2] > bx[0] && bx[3] > bx[1] {
                    boxes.push(bx);
                    sc.push(c.score);
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

/// One anchor of a level's top-k: its index within the level, score and deltas.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    index: usize,
    score: f32,
    deltas: [f32; 4],
}

/// The exact host top-k of one level (`scores` `[len]`, `deltas` `[len·4]`): descending
/// score under `total_cmp` (NaN above +inf), ties by lower index.
fn host_top_k(scores: &[f32], deltas: &[f32], k: usize) -> Vec<Candidate> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]));
    idx.truncate(k);
    idx.into_iter()
        .map(|j| Candidate {
            index: j,
            score: scores[j],
            deltas: [0, 1, 2, 3].map(|e| deltas[4 * j + e]),
        })
        .collect()
}

/// `(start, len)` of each level's anchors in the flattened `[N]` order, which groups them by
/// level (`pyramid_rpn_anchors`). Anything else is refused rather than mis-sliced.
fn level_ranges(levels: &[usize], n: usize) -> crate::Result<Vec<(usize, usize)>> {
    let bad = |message: String| crate::Error::InvalidArgument {
        what: "rpn anchors",
        message,
    };
    if levels.len() != n {
        return Err(bad(format!("{} level ids for {n} anchors", levels.len())));
    }
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (k, &l) in levels.iter().enumerate() {
        if l == ranges.len() {
            ranges.push((k, 0));
        } else if l + 1 != ranges.len() {
            return Err(bad(format!(
                "anchor {k} has level {l}: levels must be in order"
            )));
        }
        ranges[l].1 += 1;
    }
    // Indices travel as f32: exact below 2^24.
    if let Some(&(_, len)) = ranges.iter().find(|r| r.1 >= 1 << 24) {
        return Err(bad(format!("a level of {len} anchors (at most 2^24)")));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use codetr_core::geometry::anchors::valid_anchor_flags;
    use codetr_data::rng::Rng;

    /// An image of 40 × 24 pixels in a 64² canvas: the RPN loss samples only its valid anchors
    /// (what the others predict does not matter), and its proposals stay within it.
    #[test]
    fn an_image_region_samples_and_proposes_only_within_it() {
        let dev = Device::flex();
        let cfg = RpnConfig {
            samples: 64,
            pre_nms: 50,
            ..RpnConfig::default()
        };
        let (shapes, strides) = ([[8, 8], [4, 4]], [8, 16]);
        let (anchors, levels) = pyramid_rpn_anchors(&shapes, &strides, &cfg);
        let a = anchors_per_location(cfg.scales_per_octave, cfg.ratios.len());
        let flags = valid_anchor_flags(&shapes, &strides, a, [40.0, 24.0]);
        let n = anchors.len();
        let gts = vec![vec![[2.0, 3.0, 20.0, 30.0]]];
        let loss = |outside: f32| {
            let obj: Vec<f32> = (0..n)
                .map(|k| {
                    if flags[k] {
                        (k % 7) as f32 * 0.3 - 1.0
                    } else {
                        outside
                    }
                })
                .collect();
            let del: Vec<f32> = (0..n * 4).map(|k| (k % 5) as f32 * 0.05).collect();
            let out = RpnOutput {
                objectness: Tensor::from_data(TensorData::new(obj, [1, n]), &dev),
                deltas: Tensor::from_data(TensorData::new(del, [1, n, 4]), &dev),
            };
            let l = rpn_loss(
                &out,
                &anchors,
                &gts,
                &[Some(flags.clone())],
                &cfg,
                &mut Rng::new(3),
            );
            let props = proposals(&out, &anchors, &levels, &[[40.0, 24.0]], &cfg).unwrap();
            (
                l.cls.into_scalar::<f32>(),
                l.bbox.into_scalar::<f32>(),
                props,
            )
        };
        let (c0, b0, props) = loss(-4.0);
        let (c1, b1, _) = loss(6.0);
        assert_eq!((c0, b0), (c1, b1));
        assert!(!props[0].is_empty());
        assert!(props[0].iter().all(|p| p[2] <= 24.0 && p[3] <= 40.0));
    }

    /// The proposals as computed before the device top-k: every score and delta read back,
    /// each level sorted on the host.
    fn reference(
        obj: &[f32],
        del: &[f32],
        b: usize,
        anchors: &[[f32; 4]],
        levels: &[usize],
        size: f32,
        cfg: &RpnConfig,
    ) -> Vec<Vec<[f32; 4]>> {
        let n = anchors.len();
        let coder = DeltaCoder { stds: [1.0; 4] };
        let num_levels = levels.iter().copied().max().map_or(0, |m| m + 1);
        (0..b)
            .map(|i| {
                let scores = &obj[i * n..(i + 1) * n];
                let (mut boxes, mut sc, mut ids) = (Vec::new(), Vec::new(), Vec::new());
                for l in 0..num_levels {
                    let mut idx: Vec<usize> = (0..n).filter(|&k| levels[k] == l).collect();
                    idx.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]));
                    idx.truncate(cfg.pre_nms);
                    for k in idx {
                        let d = [0, 1, 2, 3].map(|e| del[(i * n + k) * 4 + e]);
                        let bx = coder.decode(anchors[k], d).map(|v| v.clamp(0.0, size));
                        if bx[2] > bx[0] && bx[3] > bx[1] {
                            boxes.push(bx);
                            sc.push(scores[k]);
                            ids.push(l);
                        }
                    }
                }
                let keep = batched_nms(&boxes, &sc, &ids, cfg.nms_iou);
                keep.into_iter()
                    .take(cfg.post_nms)
                    .map(|k| boxes[k])
                    .collect()
            })
            .collect()
    }

    /// Device top-k + host decode equals the all-host reference bit for bit: distinct scores,
    /// heavy ties at the cut (scores on a coarse grid), a NaN, and `pre_nms` above a level's
    /// size. The tie-free case reads once; a tie or a NaN costs that level one exact read.
    #[test]
    fn device_top_k_equals_the_host_sort() {
        let dev = Device::flex();
        let shapes = [[6, 5], [3, 3], [1, 2]];
        let cfg = RpnConfig {
            pre_nms: 40,
            post_nms: 25,
            ..RpnConfig::default()
        };
        let (anchors, levels) = pyramid_rpn_anchors(&shapes, &[8, 16, 32], &cfg);
        let (b, n) = (2, anchors.len());
        let mut r = Rng::new(5);
        for case in 0..4 {
            let mut obj: Vec<f32> = (0..b * n).map(|_| r.f32() * 6.0 - 3.0).collect();
            if case == 1 {
                obj.iter_mut().for_each(|v| *v = (*v * 2.0).round() / 2.0);
            }
            if case == 2 {
                obj[7] = f32::NAN;
            }
            let del: Vec<f32> = (0..b * n * 4).map(|_| r.f32() * 0.6 - 0.3).collect();
            let out = RpnOutput {
                objectness: Tensor::from_data(TensorData::new(obj.clone(), [b, n]), &dev),
                deltas: Tensor::from_data(TensorData::new(del.clone(), [b, n, 4]), &dev),
            };
            let size = 48.0;
            crate::host::reset();
            let got = proposals(&out, &anchors, &levels, &[[size, size]; 2], &cfg).unwrap();
            let reads = crate::host::snapshot().reads;
            assert_eq!(
                got,
                reference(&obj, &del, b, &anchors, &levels, size, &cfg),
                "case {case}"
            );
            assert!(got.iter().all(|p| !p.is_empty()), "case {case}");
            match case {
                0 | 3 => assert_eq!(reads, 1, "case {case}"),
                _ => assert!(reads > 1, "case {case}: the exact path must have run"),
            }
        }
    }

    #[test]
    fn level_ranges_refuse_unordered_levels() {
        assert_eq!(
            level_ranges(&[0, 0, 1, 2, 2], 5).unwrap(),
            [(0, 2), (2, 1), (3, 2)]
        );
        assert!(level_ranges(&[0, 1, 0], 3).is_err());
        assert!(level_ranges(&[0, 2], 2).is_err());
        assert!(level_ranges(&[0, 0], 3).is_err());
    }
}
