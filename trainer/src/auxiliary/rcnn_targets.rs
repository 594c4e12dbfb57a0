//! Host-side target assignment for Co-DETR's auxiliary Faster-RCNN branch, ported from mmdet
//! v2.x (`MaxIoUAssigner`, `RandomSampler`, `SingleRoIExtractor`) and mmcv (`nms`,
//! `batched_nms`); anchors and IoU are in `geometry`.
//!
//! On the host on purpose: this is per-image bookkeeping on anchors/proposals and a handful of
//! ground-truth boxes, reading nothing from the device but the RPN's top-k. Arithmetic is
//! kept in `f32` in mmdet's operation order so that targets match the reference bit for bit
//! where practical. All boxes are `[x1, y1, x2, y2]` in input-image pixels.

use std::collections::HashMap;

use codetr_core::geometry::boxes::iou;

/// Assignment of one box, mmdet's `gt_inds` (−1 ignore, 0 negative, `i + 1` positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignedGt {
    /// Neither positive nor negative: excluded from the losses.
    Ignore,
    /// Background.
    Negative,
    /// Foreground, matched to the gt with this index.
    Positive(usize),
}

/// Per-box assignment result (mmdet `AssignResult` without labels).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Assignment of each box, in box order.
    pub gt: Vec<AssignedGt>,
    /// Best IoU of each box over all gts (0 when there are none).
    pub max_iou: Vec<f32>,
}

impl Assignment {
    /// mmdet `AssignResult.add_gt_`: the assignment of `gts ++ proposals` when the proposals
    /// were assigned alone and the gts are prepended as proposals (each gt positive to itself
    /// with IoU 1), which is what mmdet's sampler does with `add_gt_as_proposals = True`.
    pub fn with_gt_prepended(&self, num_gts: usize) -> Assignment {
        let gt = (0..num_gts)
            .map(AssignedGt::Positive)
            .chain(self.gt.iter().copied())
            .collect();
        let max_iou = std::iter::repeat_n(1.0, num_gts)
            .chain(self.max_iou.iter().copied())
            .collect();
        Assignment { gt, max_iou }
    }
}

/// mmdet v2 `MaxIoUAssigner` with `gt_max_assign_all = True`, `ignore_iof_thr = -1` and a
/// scalar `neg_iou_thr` (the configuration Co-DETR uses for both RPN and RoI head).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxIouAssigner {
    /// Boxes whose best IoU is at least this become positive.
    pub pos_iou_thr: f32,
    /// Boxes whose best IoU is in `[0, neg_iou_thr)` become negative.
    pub neg_iou_thr: f32,
    /// A gt's best box is forced positive only if that IoU is at least this.
    pub min_pos_iou: f32,
    /// Whether every gt claims its best-matching boxes even below `pos_iou_thr`.
    pub match_low_quality: bool,
}

impl MaxIouAssigner {
    /// Assigns each box to a gt, as mmdet's `assign_wrt_overlaps`.
    ///
    /// The IoU matrix is never materialised (RPN anchors × gts can be tens of MB); the
    /// low-quality pass recomputes IoUs, which are bit-identical, so the `==` tie test holds.
    pub fn assign(&self, boxes: &[[f32; 4]], gts: &[[f32; 4]]) -> Assignment {
        let n = boxes.len();
        if gts.is_empty() {
            return Assignment {
                gt: vec![AssignedGt::Negative; n],
                max_iou: vec![0.0; n],
            };
        }
        let mut gt = vec![AssignedGt::Ignore; n];
        let mut max_iou = vec![0.0f32; n];
        let mut gt_max = vec![f32::NEG_INFINITY; gts.len()];
        for (b, &bx) in boxes.iter().enumerate() {
            // torch `max(dim=0)`: the first index among ties.
            let mut best = f32::NEG_INFINITY;
            let mut arg = 0;
            for (g, &gb) in gts.iter().enumerate() {
                let v = iou(bx, gb);
                if v > best {
                    best = v;
                    arg = g;
                }
                if v > gt_max[g] {
                    gt_max[g] = v;
                }
            }
            max_iou[b] = best;
            if (0.0..self.neg_iou_thr).contains(&best) {
                gt[b] = AssignedGt::Negative;
            }
            if best >= self.pos_iou_thr {
                gt[b] = AssignedGt::Positive(arg);
            }
        }
        if self.match_low_quality && n > 0 {
            for (b, &bx) in boxes.iter().enumerate() {
                // mmdet loops over gts in order, so the last matching gt wins.
                let last =
                    gts.iter().enumerate().rev().find(|&(g, &gb)| {
                        gt_max[g] >= self.min_pos_iou && iou(bx, gb) == gt_max[g]
                    });
                if let Some((g, _)) = last {
                    gt[b] = AssignedGt::Positive(g);
                }
            }
        }
        Assignment { gt, max_iou }
    }
}

/// Indices chosen by [`random_sample`], each list ascending (mmdet applies `unique()`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sampled {
    /// Sampled positive boxes.
    pub pos: Vec<usize>,
    /// Sampled negative boxes.
    pub neg: Vec<usize>,
}

/// `int(num * pos_fraction)` as Python computes it: the `f32` fraction is widened through its
/// shortest decimal form so that e.g. `0.7f32` behaves like Python's `0.7`, not `0.69999…`.
fn expected_positives(num: usize, pos_fraction: f32) -> usize {
    let frac = pos_fraction
        .to_string()
        .parse::<f64>()
        .unwrap_or(f64::from(pos_fraction));
    if frac.is_nan() || frac <= 0.0 {
        return 0;
    }
    ((num as f64 * frac.min(1.0)).floor() as usize).min(num)
}

/// Keeps all of `gallery` if it has at most `k` entries, else a uniform random subset of size
/// `k` (partial Fisher–Yates), returned ascending.
fn choose(
    mut gallery: Vec<usize>,
    k: usize,
    rand_below: &mut dyn FnMut(usize) -> usize,
) -> Vec<usize> {
    let n = gallery.len();
    if n <= k {
        return gallery;
    }
    for i in 0..k {
        // The modulo only guards against a misbehaving generator.
        let j = i + rand_below(n - i) % (n - i);
        gallery.swap(i, j);
    }
    gallery.truncate(k);
    gallery.sort_unstable();
    gallery
}

/// mmdet `RandomSampler` (`neg_pos_ub = -1`): up to `floor(num * pos_fraction)` positives, then
/// negatives to fill `num`. `rand_below(n)` must return a uniform value in `0..n`; it is called
/// only when a subset actually has to be drawn.
pub fn random_sample(
    assignment: &Assignment,
    num: usize,
    pos_fraction: f32,
    rand_below: &mut dyn FnMut(usize) -> usize,
) -> Sampled {
    let of_kind = |want: fn(&AssignedGt) -> bool| -> Vec<usize> {
        assignment
            .gt
            .iter()
            .enumerate()
            .filter(|(_, a)| want(a))
            .map(|(i, _)| i)
            .collect()
    };
    let pos_all = of_kind(|a| matches!(a, AssignedGt::Positive(_)));
    let neg_all = of_kind(|a| matches!(a, AssignedGt::Negative));
    let pos = choose(pos_all, expected_positives(num, pos_fraction), rand_below);
    let neg = choose(neg_all, num.saturating_sub(pos.len()), rand_below);
    Sampled { pos, neg }
}

/// Candidate boxes for the RoI head with `add_gt_as_proposals = True`: the gts first, then the
/// proposals, as mmdet's `BaseSampler.sample` concatenates them (see also
/// [`Assignment::with_gt_prepended`]).
pub fn with_gt_proposals(proposals: &[[f32; 4]], gts: &[[f32; 4]]) -> Vec<[f32; 4]> {
    gts.iter().chain(proposals).copied().collect()
}

/// Indices `0..n` by descending score, ties by lower index; NaN ranks as −inf and −0 as +0 so
/// the order is total and matches a plain descending sort.
fn score_order(scores: &[f32], n: usize) -> Vec<usize> {
    let key = |i: usize| {
        let s = scores[i];
        if s.is_nan() {
            f32::NEG_INFINITY
        } else {
            s + 0.0
        }
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    order
}

/// Greedy NMS where only boxes of the same group suppress each other. Each candidate is tested
/// against the already kept boxes of its group only, so the cost is O(n · kept).
fn grouped_nms(
    boxes: &[[f32; 4]],
    scores: &[f32],
    group_ids: Option<&[usize]>,
    iou_thr: f32,
) -> Vec<usize> {
    let mut n = boxes.len().min(scores.len());
    if let Some(g) = group_ids {
        n = n.min(g.len());
    }
    let mut kept_by_group: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut keep = Vec::new();
    for i in score_order(scores, n) {
        let group = group_ids.map_or(0, |g| g[i]);
        let kept = kept_by_group.entry(group).or_default();
        if !kept.iter().any(|&k| iou(boxes[k], boxes[i]) > iou_thr) {
            kept.push(i);
            keep.push(i);
        }
    }
    keep
}

/// mmcv `nms`: greedy in descending score (ties by lower index), a box is dropped when its IoU
/// with a kept box exceeds `iou_thr`. Returns kept indices in descending score order. Only the
/// first `min(boxes.len(), scores.len())` boxes are considered.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_thr: f32) -> Vec<usize> {
    grouped_nms(boxes, scores, None, iou_thr)
}

/// mmcv `batched_nms` (class-aware): [`nms`] run independently per `group_ids` value (the RPN
/// uses the pyramid level), merged in descending score order.
pub fn batched_nms(
    boxes: &[[f32; 4]],
    scores: &[f32],
    group_ids: &[usize],
    iou_thr: f32,
) -> Vec<usize> {
    grouped_nms(boxes, scores, Some(group_ids), iou_thr)
}

/// mmdet `SingleRoIExtractor.map_roi_levels`: the pyramid level whose RoIAlign features a RoI
/// uses, `floor(log2(sqrt(area) / finest_scale + 1e-6))` clamped to `0..num_levels`.
/// Degenerate or NaN RoIs map to level 0.
pub fn roi_level(roi: [f32; 4], finest_scale: f32, num_levels: usize) -> usize {
    let scale = ((roi[2] - roi[0]) * (roi[3] - roi[1])).sqrt();
    let lvl = (scale / finest_scale + 1e-6).log2().floor();
    // `as usize` saturates: NaN and negatives become 0, +inf becomes usize::MAX.
    (lvl as usize).min(num_levels.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    use codetr_data::rng::Rng;

    /// Integer-valued box on a small grid so that IoU ties and degenerate boxes occur.
    fn grid_box(r: &mut Rng, grid: usize) -> [f32; 4] {
        let (a, b) = (r.below(grid) as f32, r.below(grid) as f32);
        let (c, d) = (r.below(grid) as f32, r.below(grid) as f32);
        [a.min(b), c.min(d), a.max(b), c.max(d)]
    }

    const RPN: MaxIouAssigner = MaxIouAssigner {
        pos_iou_thr: 0.7,
        neg_iou_thr: 0.3,
        min_pos_iou: 0.3,
        match_low_quality: true,
    };

    #[test]
    fn assigner_bands() {
        let gts = [[0.0, 0.0, 10.0, 10.0]];
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],   // IoU 1   -> positive
            [0.0, 0.0, 10.0, 5.0],    // IoU 0.5 -> ignore band
            [0.0, 0.0, 10.0, 2.0],    // IoU 0.2 -> negative
            [20.0, 20.0, 30.0, 30.0], // IoU 0   -> negative
        ];
        let a = RPN.assign(&boxes, &gts);
        use AssignedGt::*;
        assert_eq!(a.gt, vec![Positive(0), Ignore, Negative, Negative]);
        assert_eq!(a.max_iou, vec![1.0, 0.5, 0.2, 0.0]);
    }

    #[test]
    fn assigner_low_quality_and_ties() {
        use AssignedGt::*;
        let gts = [[0.0, 0.0, 10.0, 10.0]];
        // Best IoU 0.5 < pos_iou_thr, shared by three boxes: all three become positive.
        let boxes = [
            [0.0, 0.0, 10.0, 5.0],
            [0.0, 5.0, 10.0, 10.0],
            [0.0, 0.0, 5.0, 10.0],
            [0.0, 0.0, 10.0, 4.0], // 0.4: stays in the ignore band
        ];
        let a = RPN.assign(&boxes, &gts);
        assert_eq!(a.gt, vec![Positive(0), Positive(0), Positive(0), Ignore]);
        let strict = MaxIouAssigner {
            match_low_quality: false,
            ..RPN
        };
        assert_eq!(strict.assign(&boxes, &gts).gt, vec![Ignore; 4]);
        // min_pos_iou blocks: best IoU 0.2 < 0.3 leaves the box negative.
        let a = RPN.assign(&[[0.0, 0.0, 10.0, 2.0]], &gts);
        assert_eq!(a.gt, vec![Negative]);
        let loose = MaxIouAssigner {
            min_pos_iou: 0.2,
            ..RPN
        };
        assert_eq!(
            loose.assign(&[[0.0, 0.0, 10.0, 2.0]], &gts).gt,
            vec![Positive(0)]
        );
    }

    #[test]
    fn assigner_later_gt_overwrites() {
        use AssignedGt::*;
        // The box has IoU 100/150 with both gts; argmax picks gt 0, the low-quality pass then
        // assigns gt 0 and overwrites with gt 1.
        let gts = [[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]];
        let boxes = [[0.0, 0.0, 15.0, 10.0], [40.0, 40.0, 50.0, 50.0]];
        let a = RPN.assign(&boxes, &gts);
        assert_eq!(a.gt, vec![Positive(1), Negative]);
        let pos_only = MaxIouAssigner {
            pos_iou_thr: 0.6,
            match_low_quality: false,
            ..RPN
        };
        assert_eq!(
            pos_only.assign(&boxes, &gts).gt,
            vec![Positive(0), Negative]
        );
        let both = MaxIouAssigner {
            pos_iou_thr: 0.6,
            ..RPN
        };
        assert_eq!(both.assign(&boxes, &gts).gt, vec![Positive(1), Negative]);
    }

    #[test]
    fn assigner_empty_inputs() {
        let a = RPN.assign(&[[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]], &[]);
        assert_eq!(a.gt, vec![AssignedGt::Negative; 2]);
        assert_eq!(a.max_iou, vec![0.0; 2]);
        let a = RPN.assign(&[], &[[0.0, 0.0, 1.0, 1.0]]);
        assert!(a.gt.is_empty() && a.max_iou.is_empty());
    }

    #[test]
    fn with_gt_prepended_matches_add_gt() {
        let a = Assignment {
            gt: vec![AssignedGt::Negative, AssignedGt::Ignore],
            max_iou: vec![0.1, 0.4],
        };
        let b = a.with_gt_prepended(2);
        use AssignedGt::*;
        assert_eq!(b.gt, vec![Positive(0), Positive(1), Negative, Ignore]);
        assert_eq!(b.max_iou, vec![1.0, 1.0, 0.1, 0.4]);
        let p = [[5.0, 5.0, 6.0, 6.0]];
        let g = [[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0]];
        assert_eq!(with_gt_proposals(&p, &g), vec![g[0], g[1], p[0]]);
    }

    /// Literal transcription of mmdet's `assign_wrt_overlaps` over a full IoU matrix.
    fn reference_assign(a: &MaxIouAssigner, boxes: &[[f32; 4]], gts: &[[f32; 4]]) -> Vec<i64> {
        let ov = |g: [f32; 4], b: [f32; 4]| -> f32 {
            let w = (g[2].min(b[2]) - g[0].max(b[0])).max(0.0);
            let h = (g[3].min(b[3]) - g[1].max(b[1])).max(0.0);
            let u = (g[2] - g[0]) * (g[3] - g[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h;
            if u > 0.0 { w * h / u } else { 0.0 }
        };
        let m: Vec<Vec<f32>> = gts
            .iter()
            .map(|&g| boxes.iter().map(|&b| ov(g, b)).collect())
            .collect();
        let mut inds = vec![-1i64; boxes.len()];
        if gts.is_empty() {
            return vec![0; boxes.len()];
        }
        for b in 0..boxes.len() {
            let mut best = 0;
            for g in 1..gts.len() {
                if m[g][b] > m[best][b] {
                    best = g;
                }
            }
            let mx = m[best][b];
            if mx >= 0.0 && mx < a.neg_iou_thr {
                inds[b] = 0;
            }
            if mx >= a.pos_iou_thr {
                inds[b] = best as i64 + 1;
            }
        }
        if a.match_low_quality {
            for (g, row) in m.iter().enumerate() {
                let gmax = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if gmax >= a.min_pos_iou {
                    for b in 0..boxes.len() {
                        if row[b] == gmax {
                            inds[b] = g as i64 + 1;
                        }
                    }
                }
            }
        }
        inds
    }

    #[test]
    fn assigner_matches_reference_on_random_inputs() {
        let mut rng = Rng::new(7);
        let cfgs = [
            RPN,
            MaxIouAssigner {
                pos_iou_thr: 0.5,
                neg_iou_thr: 0.5,
                min_pos_iou: 0.5,
                match_low_quality: false,
            },
            MaxIouAssigner {
                pos_iou_thr: 0.4,
                neg_iou_thr: 0.5,
                min_pos_iou: 0.0,
                match_low_quality: true,
            },
        ];
        let mut seen_pos = 0;
        for _ in 0..300 {
            let gts: Vec<_> = (0..rng.below(5)).map(|_| grid_box(&mut rng, 12)).collect();
            let boxes: Vec<_> = (0..rng.below(40)).map(|_| grid_box(&mut rng, 12)).collect();
            for cfg in &cfgs {
                let got: Vec<i64> = cfg
                    .assign(&boxes, &gts)
                    .gt
                    .iter()
                    .map(|a| match a {
                        AssignedGt::Ignore => -1,
                        AssignedGt::Negative => 0,
                        AssignedGt::Positive(i) => *i as i64 + 1,
                    })
                    .collect();
                seen_pos += got.iter().filter(|&&v| v > 0).count();
                assert_eq!(got, reference_assign(cfg, &boxes, &gts));
            }
        }
        assert!(seen_pos > 100);
    }

    fn assignment_of(kinds: &[AssignedGt]) -> Assignment {
        Assignment {
            gt: kinds.to_vec(),
            max_iou: vec![0.0; kinds.len()],
        }
    }

    fn mixed(npos: usize, nneg: usize, nign: usize) -> Assignment {
        let mut kinds = Vec::new();
        let total = npos + nneg + nign;
        let (mut p, mut n) = (0, 0);
        for i in 0..total {
            // Interleave so that indices of each kind are not contiguous.
            let k = if p < npos && i % 3 == 0 {
                p += 1;
                AssignedGt::Positive(i % 2)
            } else if n < nneg && i % 3 != 2 {
                n += 1;
                AssignedGt::Negative
            } else if p < npos {
                p += 1;
                AssignedGt::Positive(0)
            } else if n < nneg {
                n += 1;
                AssignedGt::Negative
            } else {
                AssignedGt::Ignore
            };
            kinds.push(k);
        }
        assignment_of(&kinds)
    }

    fn check_kinds(a: &Assignment, s: &Sampled) {
        for w in s.pos.windows(2).chain(s.neg.windows(2)) {
            assert!(w[0] < w[1], "sorted and unique");
        }
        assert!(
            s.pos
                .iter()
                .all(|&i| matches!(a.gt[i], AssignedGt::Positive(_)))
        );
        assert!(s.neg.iter().all(|&i| a.gt[i] == AssignedGt::Negative));
    }

    #[test]
    fn sampler_counts() {
        let a = mixed(10, 100, 20);
        let mut rng = Rng::new(1);
        let s = random_sample(&a, 16, 0.25, &mut |n| rng.below(n));
        assert_eq!((s.pos.len(), s.neg.len()), (4, 12));
        check_kinds(&a, &s);
        // Fewer positives than expected: the rest are negatives.
        let a = mixed(2, 100, 5);
        let s = random_sample(&a, 16, 0.25, &mut |n| rng.below(n));
        assert_eq!((s.pos.len(), s.neg.len()), (2, 14));
        check_kinds(&a, &s);
        // Too few of both: everything is taken, in order, without calling the generator.
        let a = mixed(3, 5, 4);
        let s = random_sample(&a, 256, 0.5, &mut |_| unreachable!());
        assert_eq!((s.pos.len(), s.neg.len()), (3, 5));
        check_kinds(&a, &s);
        // int(10 * 0.7) == 7 as in Python, although 0.7f32 < 0.7.
        let a = mixed(20, 20, 0);
        let s = random_sample(&a, 10, 0.7, &mut |n| rng.below(n));
        assert_eq!((s.pos.len(), s.neg.len()), (7, 3));
        // Degenerate fractions.
        let s = random_sample(&a, 10, f32::NAN, &mut |n| rng.below(n));
        assert_eq!((s.pos.len(), s.neg.len()), (0, 10));
        let s = random_sample(&a, 10, 2.0, &mut |n| rng.below(n));
        assert_eq!((s.pos.len(), s.neg.len()), (10, 0));
        // A generator returning out-of-range values must not panic.
        let s = random_sample(&a, 10, 0.5, &mut |n| n + 3);
        assert_eq!((s.pos.len(), s.neg.len()), (5, 5));
        check_kinds(&a, &s);
    }

    #[test]
    fn sampler_deterministic_and_covers_all() {
        let a = mixed(30, 200, 10);
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            random_sample(&a, 32, 0.25, &mut |n| rng.below(n))
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        // Over many draws every positive gets picked: the subset is random, not a prefix.
        let mut hit = vec![false; a.gt.len()];
        for seed in 0..200 {
            let s = draw(seed);
            check_kinds(&a, &s);
            assert_eq!((s.pos.len(), s.neg.len()), (8, 24));
            for &i in &s.pos {
                hit[i] = true;
            }
        }
        let positives =
            a.gt.iter()
                .enumerate()
                .filter(|(_, g)| matches!(g, AssignedGt::Positive(_)));
        assert!(positives.clone().count() == 30);
        assert!(positives.into_iter().all(|(i, _)| hit[i]));
    }

    #[test]
    fn nms_by_hand() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],   // 0: .9 kept
            [1.0, 1.0, 11.0, 11.0],   // 1: .8 IoU 81/119 with 0 -> suppressed
            [0.0, 0.0, 10.0, 9.0],    // 2: .7 IoU 0.9 with 0 -> suppressed
            [50.0, 50.0, 60.0, 60.0], // 3: .85 separate -> kept
            [2.0, 2.0, 12.0, 12.0],   // 4: .75 IoU 64/136 with 0; only 1 (suppressed) overlaps more
        ];
        let scores = [0.9, 0.8, 0.7, 0.85, 0.75];
        assert_eq!(nms(&boxes, &scores, 0.5), vec![0, 3, 4]);
        // IoU exactly at the threshold does not suppress.
        let b = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]];
        assert_eq!(nms(&b, &[0.5, 0.6], 0.5), vec![1, 0]);
        assert_eq!(nms(&b, &[0.5, 0.6], 0.49), vec![1]);
        // Equal scores: the lower index wins.
        assert_eq!(nms(&b, &[0.5, 0.5], 0.3), vec![0]);
        assert!(nms(&[], &[], 0.5).is_empty());
    }

    #[test]
    fn batched_groups_do_not_interact() {
        let boxes = [[0.0, 0.0, 10.0, 10.0]; 4];
        let scores = [0.1, 0.9, 0.5, 0.7];
        assert_eq!(
            batched_nms(&boxes, &scores, &[0, 1, 2, 3], 0.5),
            vec![1, 3, 2, 0]
        );
        assert_eq!(batched_nms(&boxes, &scores, &[0, 1, 0, 1], 0.5), vec![1, 2]);
        assert_eq!(batched_nms(&boxes, &scores, &[7; 4], 0.5), vec![1]);
    }

    #[test]
    fn nms_nan_scores() {
        let same = [[0.0, 0.0, 10.0, 10.0]; 2];
        assert_eq!(nms(&same, &[f32::NAN, 0.5], 0.5), vec![1]);
        let apart = [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]];
        assert_eq!(nms(&apart, &[f32::NAN, 0.5], 0.5), vec![1, 0]);
        assert_eq!(nms(&apart, &[f32::NAN, f32::NAN], 0.5), vec![0, 1]);
        let nan_box = [[f32::NAN; 4], [0.0, 0.0, 1.0, 1.0]];
        assert_eq!(nms(&nan_box, &[1.0, 0.5], 0.5), vec![0, 1]);
    }

    /// Classic O(n²) suppression-flag NMS per group, then a global score sort.
    fn reference_batched(b: &[[f32; 4]], s: &[f32], g: &[usize], thr: f32) -> Vec<usize> {
        let mut order: Vec<usize> = (0..b.len()).collect();
        order.sort_by(|&x, &y| s[y].partial_cmp(&s[x]).unwrap().then(x.cmp(&y)));
        let mut suppressed = vec![false; b.len()];
        let mut keep = Vec::new();
        for (pos, &i) in order.iter().enumerate() {
            if suppressed[i] {
                continue;
            }
            keep.push(i);
            for &j in &order[pos + 1..] {
                let w = (b[i][2].min(b[j][2]) - b[i][0].max(b[j][0])).max(0.0);
                let h = (b[i][3].min(b[j][3]) - b[i][1].max(b[j][1])).max(0.0);
                let ai = (b[i][2] - b[i][0]) * (b[i][3] - b[i][1]);
                let aj = (b[j][2] - b[j][0]) * (b[j][3] - b[j][1]);
                let u = ai + aj - w * h;
                let o = if u > 0.0 { w * h / u } else { 0.0 };
                if g[i] == g[j] && o > thr {
                    suppressed[j] = true;
                }
            }
        }
        keep.sort_by(|&x, &y| s[y].partial_cmp(&s[x]).unwrap().then(x.cmp(&y)));
        keep
    }

    #[test]
    fn nms_matches_reference_on_random_boxes() {
        let mut rng = Rng::new(99);
        for round in 0..60 {
            let n = 1 + rng.below(300);
            let boxes: Vec<_> = (0..n).map(|_| grid_box(&mut rng, 40)).collect();
            // Quantised scores so ties are common.
            let scores: Vec<f32> = (0..n).map(|_| rng.below(50) as f32 / 50.0).collect();
            let groups: Vec<usize> = (0..n).map(|_| rng.below(3)).collect();
            let thr = [0.3, 0.5, 0.7][round % 3];
            let single = vec![0; n];
            assert_eq!(
                nms(&boxes, &scores, thr),
                reference_batched(&boxes, &scores, &single, thr)
            );
            assert_eq!(
                batched_nms(&boxes, &scores, &groups, thr),
                reference_batched(&boxes, &scores, &groups, thr)
            );
        }
    }

    #[test]
    fn nms_large_input() {
        let mut rng = Rng::new(5);
        let n = 4000;
        let boxes: Vec<_> = (0..n).map(|_| grid_box(&mut rng, 1000)).collect();
        let scores: Vec<f32> = (0..n).map(|_| rng.next_u64() as f32).collect();
        let groups: Vec<usize> = (0..n).map(|i| i % 5).collect();
        let keep = batched_nms(&boxes, &scores, &groups, 0.7);
        assert!(!keep.is_empty() && keep.len() <= n);
        assert!(keep.windows(2).all(|w| scores[w[0]] >= scores[w[1]]));
    }

    #[test]
    fn roi_levels_by_hand() {
        let sq = |s: f32| [10.0, 20.0, 10.0 + s, 20.0 + s];
        // log2(56/56 + 1e-6) ~ 1.4e-6 -> 0; 112 -> log2(2.000001) -> 1; 224 -> 2; 448 -> 3.
        assert_eq!(roi_level(sq(56.0), 56.0, 4), 0);
        assert_eq!(roi_level(sq(111.0), 56.0, 4), 0);
        assert_eq!(roi_level(sq(112.0), 56.0, 4), 1);
        assert_eq!(roi_level(sq(224.0), 56.0, 4), 2);
        assert_eq!(roi_level(sq(448.0), 56.0, 4), 3);
        // The 1e-6 absorbs rounding just below a power of two: sqrt(112 * 111.9999) / 56
        // = 1.9999991, + 1e-6 -> level 1 (level 0 without the epsilon).
        assert_eq!(roi_level([0.0, 0.0, 112.0, 111.9999], 56.0, 4), 1);
        assert_eq!(roi_level([0.0, 0.0, 112.0, 111.99], 56.0, 4), 0);
        // Non-square: sqrt(56 * 224) = 112 -> 1.
        assert_eq!(roi_level([0.0, 0.0, 56.0, 224.0], 56.0, 4), 1);
        // Tiny -> 0; huge -> last level.
        assert_eq!(roi_level(sq(1.0), 56.0, 4), 0);
        assert_eq!(roi_level(sq(5000.0), 56.0, 4), 3);
        assert_eq!(roi_level(sq(5000.0), 56.0, 5), 4);
        // Degenerate inputs never panic.
        assert_eq!(roi_level(sq(0.0), 56.0, 4), 0);
        assert_eq!(roi_level([10.0, 0.0, 0.0, 10.0], 56.0, 4), 0);
        assert_eq!(roi_level([f32::NAN; 4], 56.0, 4), 0);
        assert_eq!(roi_level(sq(5000.0), 56.0, 0), 0);
        assert_eq!(roi_level(sq(100.0), 0.0, 4), 3);
    }
}
