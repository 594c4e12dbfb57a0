//! ATSS label assignment for Co-DETR's auxiliary ATSS head, ported from mmdet v2.x
//! (`ATSSAssigner`, `ATSSHead.centerness_target`); anchors, IoU and the delta coder are in
//! `geometry`.
//!
//! On the host on purpose: the assignment is per-image bookkeeping on a few thousand anchors and
//! a handful of boxes, reading nothing from the device. All boxes are `[x1, y1, x2, y2]` in
//! input-image pixels.

use codetr_core::geometry::boxes::{center, iou};

/// Result of [`atss_assign`], one entry per anchor.
#[derive(Debug, Clone, PartialEq)]
pub struct AtssAssignment {
    /// Index of the assigned gt box, `None` for background.
    pub gt: Vec<Option<usize>>,
    /// IoU with the assigned gt box (0 for background).
    pub max_iou: Vec<f32>,
}

/// mmdet's `ATSSAssigner.assign` (v2.x).
///
/// For every gt, the `min(topk, level size)` anchors per level whose centres are closest to the
/// gt centre (ties → lower anchor index) are candidates; a candidate is positive when its IoU is
/// at least mean + unbiased std of the candidates' IoUs (std taken as 0 for a single candidate,
/// where torch would give `NaN`) and its centre lies inside the gt by more than 0.01 px.
/// An anchor positive for several gts takes the one with the highest IoU (ties → lower index).
///
/// `num_per_level` partitions `anchors` in order; counts past the end of `anchors` are clipped
/// and anchors after the last level are never candidates.
pub fn atss_assign(
    anchors: &[[f32; 4]],
    num_per_level: &[usize],
    gt_boxes: &[[f32; 4]],
    topk: usize,
) -> AtssAssignment {
    let n = anchors.len();
    let mut out = AtssAssignment {
        gt: vec![None; n],
        max_iou: vec![0.0; n],
    };
    if n == 0 || gt_boxes.is_empty() || topk == 0 {
        return out;
    }
    let mut levels = Vec::with_capacity(num_per_level.len());
    let mut start = 0usize;
    for &count in num_per_level {
        let end = start.saturating_add(count).min(n);
        if end > start {
            levels.push(start..end);
        }
        start = end;
    }
    let centers: Vec<[f32; 2]> = anchors.iter().map(|&a| center(a)).collect();

    let mut by_distance: Vec<(f32, usize)> = Vec::new();
    let mut candidates: Vec<(usize, f32)> = Vec::new();
    for (g, &gt) in gt_boxes.iter().enumerate() {
        let [gx, gy] = center(gt);
        candidates.clear();
        for level in &levels {
            by_distance.clear();
            by_distance.extend(level.clone().map(|i| {
                let [cx, cy] = centers[i];
                (((cx - gx).powi(2) + (cy - gy).powi(2)).sqrt(), i)
            }));
            let k = topk.min(by_distance.len());
            if k < by_distance.len() {
                // Only membership of the k nearest matters, not their order.
                by_distance
                    .select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                by_distance.truncate(k);
            }
            candidates.extend(by_distance.iter().map(|&(_, i)| (i, iou(anchors[i], gt))));
        }
        if candidates.is_empty() {
            continue;
        }
        // f64 statistics: identical IoUs then give exactly std 0 and threshold == IoU.
        let count = candidates.len() as f64;
        let mean = candidates.iter().map(|&(_, v)| f64::from(v)).sum::<f64>() / count;
        let std = if candidates.len() > 1 {
            let ss: f64 = candidates
                .iter()
                .map(|&(_, v)| (f64::from(v) - mean).powi(2))
                .sum();
            (ss / (count - 1.0)).sqrt()
        } else {
            0.0
        };
        let threshold = mean + std;
        for &(i, v) in &candidates {
            let [cx, cy] = centers[i];
            let margin = (cx - gt[0]).min(cy - gt[1]).min(gt[2] - cx).min(gt[3] - cy);
            if f64::from(v) >= threshold && margin > 0.01 {
                // gts are visited in order, so a strict `>` keeps the lower index on ties.
                let better = match out.gt[i] {
                    None => true,
                    Some(_) => v > out.max_iou[i],
                };
                if better {
                    out.gt[i] = Some(g);
                    out.max_iou[i] = v;
                }
            }
        }
    }
    out
}

/// mmdet `ATSSHead.centerness_target`: how central the anchor centre sits in `gt`,
/// `sqrt(min(l, r) / max(l, r) · min(t, b) / max(t, b))`. Returns 0 when the centre is not
/// strictly inside `gt` (mmdet only ever calls it for positives, whose centres are inside; the
/// guard keeps degenerate inputs from producing `NaN`).
pub fn centerness_target(anchor: [f32; 4], gt: [f32; 4]) -> f32 {
    let [cx, cy] = center(anchor);
    let l = cx - gt[0];
    let t = cy - gt[1];
    let r = gt[2] - cx;
    let b = gt[3] - cy;
    if l.min(t).min(r).min(b) > 0.0 {
        ((l.min(r) / l.max(r)) * (t.min(b) / t.max(b))).sqrt()
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codetr_core::geometry::anchors::square_anchors;
    use codetr_core::geometry::coder::DeltaCoder;

    /// Level of a 4×4 grid, stride 8, octave scale 2: 16 px anchors centred at multiples of 8;
    /// anchor (x, y) = [8x − 8, 8y − 8, 8x + 8, 8y + 8], index y·4 + x.
    fn grid4() -> Vec<[f32; 4]> {
        square_anchors(&[[4, 4]], &[8], 2.0)
    }

    fn positives(a: &AtssAssignment) -> Vec<(usize, usize)> {
        a.gt.iter()
            .enumerate()
            .filter_map(|(i, g)| g.map(|g| (i, g)))
            .collect()
    }

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn single_gt_threshold_by_hand() {
        // gt [4,4,20,20], centre (12,12), area 256. With topk 9:
        // nearest 4 (dist √32): centres (8,8),(16,8),(8,16),(16,16) → idx 5,6,9,10;
        //   e.g. anchor 5 [0,0,16,16] ∩ gt = 12·12 = 144, union 256+256−144 = 368, IoU 0.391304.
        // next 8 tie at √160; lowest indices 1,2,4,7,8 are taken; each overlaps 12·4 = 48,
        //   union 464, IoU 0.103448.
        // mean = (4·0.391304 + 5·0.103448)/9 = 0.231384;
        // var = (4·0.159920² + 5·0.127936²)/8 = 0.023017, std 0.151714 → thr 0.383098:
        // only the 4 central anchors pass; their centres are ≥ 4 px inside the gt.
        let gt = [[4.0, 4.0, 20.0, 20.0]];
        let a = atss_assign(&grid4(), &[16], &gt, 9);
        assert_eq!(positives(&a), vec![(5, 0), (6, 0), (9, 0), (10, 0)]);
        for i in [5, 6, 9, 10] {
            assert!(close(a.max_iou[i], 144.0 / 368.0, 1e-6));
        }
        assert!(
            a.max_iou
                .iter()
                .enumerate()
                .all(|(i, &v)| a.gt[i].is_some() || v == 0.0)
        );
    }

    #[test]
    fn topk_larger_than_level() {
        // topk 100 > 16 → all anchors of the level are candidates. Same gt as above:
        // 4 central IoU 0.391304, 8 edge IoU 0.103448, 4 corners 16/496 = 0.032258.
        // mean = 2.521835/16 = 0.157615; var = (4·0.233689² + 8·0.054167² + 4·0.125357²)/15
        // = 0.020318, std 0.142541 → thr 0.300156 → again exactly the 4 central anchors.
        let gt = [[4.0, 4.0, 20.0, 20.0]];
        let a = atss_assign(&grid4(), &[16], &gt, 100);
        assert_eq!(positives(&a), vec![(5, 0), (6, 0), (9, 0), (10, 0)]);
    }

    #[test]
    fn shared_candidate_goes_to_higher_iou() {
        // gt0 = [6,6,18,18] (area 144), gt1 = [4,4,20,20], both centred at (12,12), same
        // candidates (topk 9: idx 5,6,9,10 + 1,2,4,7,8).
        // gt0: central IoU 10·10/(256+144−100) = 1/3, others 10·2/380 = 0.052632;
        //   mean 0.177388, std 0.147942 → thr 0.325330 ≤ 1/3 → central 4 positive.
        // gt1: central IoU 0.391304 (positive, see above). 0.391 > 0.333 → all to gt1,
        // even though gt0 has the lower index.
        let gts = [[6.0, 6.0, 18.0, 18.0], [4.0, 4.0, 20.0, 20.0]];
        let a = atss_assign(&grid4(), &[16], &gts, 9);
        assert_eq!(positives(&a), vec![(5, 1), (6, 1), (9, 1), (10, 1)]);
        // Exact IoU tie (duplicate gt) → lower gt index.
        let dup = [[4.0, 4.0, 20.0, 20.0], [4.0, 4.0, 20.0, 20.0]];
        let a = atss_assign(&grid4(), &[16], &dup, 9);
        assert_eq!(positives(&a), vec![(5, 0), (6, 0), (9, 0), (10, 0)]);
    }

    #[test]
    fn candidates_with_centres_outside_gt_are_rejected() {
        // gt [9,9,15,15]: the nearest centres (8 or 16 on each axis) are all outside, and no
        // anchor centre (multiples of 8) lies in (9.01, 14.99) → no positives whatever topk.
        let gt = [[9.0, 9.0, 15.0, 15.0]];
        for topk in [1, 4, 9, 16] {
            let a = atss_assign(&grid4(), &[16], &gt, topk);
            assert!(positives(&a).is_empty(), "topk {topk}");
        }
        // gt [7.995, 7.995, 16.005, 16.005]: the 4 central anchors (centres 8 or 16) pass the
        // IoU threshold (≈0.25 vs ≈0 for the rest) but sit only 0.005 px inside → rejected by
        // the 0.01 margin; with margin 0.02 more the same gt yields the 4 positives.
        let gt = [[7.995, 7.995, 16.005, 16.005]];
        assert!(positives(&atss_assign(&grid4(), &[16], &gt, 9)).is_empty());
        let gt = [[7.975, 7.975, 16.025, 16.025]];
        let a = atss_assign(&grid4(), &[16], &gt, 9);
        assert_eq!(positives(&a), vec![(5, 0), (6, 0), (9, 0), (10, 0)]);
    }

    #[test]
    fn two_levels_by_hand() {
        // Level 0: 4×4 stride 8 side 16 (idx 0..16); level 1: 2×2 stride 16 side 32 (16..20).
        // gt [0,0,32,32], centre (16,16), area 1024, topk 2:
        // L0: idx 10 (dist 0) [8,8,24,24] → 256/1024 = 0.25; then 4 tie at 8 → idx 6
        //     [8,0,24,16] → 256/1024 = 0.25.
        // L1: idx 19 (dist 0) [0,0,32,32] → 1.0; then 17,18 tie at 16 → idx 17
        //     [0,−16,32,16] → 512/1536 = 0.333333.
        // mean 0.458333; var = (2·0.208333² + 0.541667² + 0.125²)/3 = 0.131944, std 0.363242
        // → thr 0.821575 → only idx 19.
        let a = square_anchors(&[[4, 4], [2, 2]], &[8, 16], 2.0);
        let res = atss_assign(&a, &[16, 4], &[[0.0, 0.0, 32.0, 32.0]], 2);
        assert_eq!(positives(&res), vec![(19, 0)]);
        assert_eq!(res.max_iou[19], 1.0);
    }

    #[test]
    fn single_candidate_uses_zero_std() {
        // topk 1, one level → one candidate, threshold = its own IoU → positive if inside.
        let gt = [[4.0, 4.0, 20.0, 20.0]];
        let a = atss_assign(&grid4(), &[16], &gt, 1);
        // Nearest (tie among 5,6,9,10) → lowest index 5.
        assert_eq!(positives(&a), vec![(5, 0)]);
    }

    #[test]
    fn empty_inputs() {
        let a = atss_assign(&grid4(), &[16], &[], 9);
        assert_eq!(a.gt, vec![None; 16]);
        assert_eq!(a.max_iou, vec![0.0; 16]);
        let a = atss_assign(&[], &[], &[[0.0, 0.0, 1.0, 1.0]], 9);
        assert!(a.gt.is_empty() && a.max_iou.is_empty());
        // Level counts that do not match the anchor count must not panic.
        let a = atss_assign(&grid4(), &[3, 100], &[[4.0, 4.0, 20.0, 20.0]], 9);
        assert_eq!(a.gt.len(), 16);
        let a = atss_assign(&grid4(), &[16], &[[4.0, 4.0, 20.0, 20.0]], 0);
        assert!(positives(&a).is_empty());
    }

    #[test]
    fn degenerate_gts_are_finite() {
        let gts = [
            [8.0, 8.0, 8.0, 8.0],
            [4.0, 8.0, 20.0, 8.0],
            [8.0, 0.0, 8.0, 24.0],
        ];
        let a = atss_assign(&grid4(), &[16], &gts, 9);
        assert!(a.max_iou.iter().all(|v| v.is_finite()));
        assert!(positives(&a).is_empty());
        // Zero-size anchors too (0/0 union).
        let pts = square_anchors(&[[4, 4]], &[8], 0.0);
        let a = atss_assign(&pts, &[16], &gts, 9);
        assert!(a.max_iou.iter().all(|v| v.is_finite()));
        for g in gts {
            assert!(
                DeltaCoder::default()
                    .encode(g, g)
                    .iter()
                    .all(|v| v.is_finite())
            );
            assert_eq!(centerness_target(g, g), 0.0);
        }
    }

    use codetr_data::rng::Rng;

    /// A random box with sides in `[min, max)` somewhere around a 100-px image.
    fn bx(r: &mut Rng, min: f32, max: f32) -> [f32; 4] {
        let x = r.uniform(-20.0, 120.0);
        let y = r.uniform(-20.0, 120.0);
        [x, y, x + r.uniform(min, max), y + r.uniform(min, max)]
    }

    /// Brute force written anchor-major with plain loops and a repeated-minimum top-k.
    fn brute_force(
        anchors: &[[f32; 4]],
        per_level: &[usize],
        gts: &[[f32; 4]],
        topk: usize,
    ) -> (Vec<Option<usize>>, Vec<f32>) {
        let na = anchors.len();
        let ng = gts.len();
        let mut ious = vec![vec![0f32; ng]; na];
        let mut dist = vec![vec![0f32; ng]; na];
        for i in 0..na {
            let a = anchors[i];
            let (acx, acy) = ((a[0] + a[2]) / 2.0, (a[1] + a[3]) / 2.0);
            for j in 0..ng {
                let g = gts[j];
                let w = f32::max(0.0, f32::min(a[2], g[2]) - f32::max(a[0], g[0]));
                let h = f32::max(0.0, f32::min(a[3], g[3]) - f32::max(a[1], g[1]));
                let inter = w * h;
                let u = (a[2] - a[0]) * (a[3] - a[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter;
                ious[i][j] = if u > 0.0 { inter / u } else { 0.0 };
                let (gcx, gcy) = ((g[0] + g[2]) / 2.0, (g[1] + g[3]) / 2.0);
                let (ddx, ddy) = (acx - gcx, acy - gcy);
                dist[i][j] = (ddx * ddx + ddy * ddy).sqrt();
            }
        }
        // pos[i][j]: anchor i is a positive candidate of gt j.
        let mut pos = vec![vec![false; ng]; na];
        for j in 0..ng {
            let mut cand = Vec::new();
            let mut s = 0;
            for &cnt in per_level {
                let mut taken = vec![false; cnt];
                for _ in 0..topk.min(cnt) {
                    let mut best: Option<usize> = None;
                    for k in 0..cnt {
                        if taken[k] {
                            continue;
                        }
                        if best.is_none_or(|b| dist[s + k][j] < dist[s + b][j]) {
                            best = Some(k);
                        }
                    }
                    let b = best.unwrap();
                    taken[b] = true;
                    cand.push(s + b);
                }
                s += cnt;
            }
            let n = cand.len() as f64;
            let mut sum = 0f64;
            for &c in &cand {
                sum += ious[c][j] as f64;
            }
            let mean = sum / n;
            let mut ss = 0f64;
            for &c in &cand {
                ss += (ious[c][j] as f64 - mean) * (ious[c][j] as f64 - mean);
            }
            let std = if cand.len() > 1 {
                (ss / (n - 1.0)).sqrt()
            } else {
                0.0
            };
            for &c in &cand {
                let a = anchors[c];
                let g = gts[j];
                let (cx, cy) = ((a[0] + a[2]) / 2.0, (a[1] + a[3]) / 2.0);
                let inside =
                    cx - g[0] > 0.01 && cy - g[1] > 0.01 && g[2] - cx > 0.01 && g[3] - cy > 0.01;
                if ious[c][j] as f64 >= mean + std && inside {
                    pos[c][j] = true;
                }
            }
        }
        let mut gt = vec![None; na];
        let mut best = vec![0f32; na];
        for i in 0..na {
            for j in (0..ng).rev() {
                if pos[i][j] && (gt[i].is_none() || ious[i][j] >= best[i]) {
                    gt[i] = Some(j);
                    best[i] = ious[i][j];
                }
            }
        }
        (gt, best)
    }

    #[test]
    fn matches_brute_force_on_random_cases() {
        let mut rng = Rng::new(0x5EED_A755);
        let mut total_pos = 0;
        for case in 0..400 {
            let nlev = 1 + rng.below(3);
            let mut all = Vec::new();
            let mut per = Vec::new();
            for _ in 0..nlev {
                let cnt = 1 + rng.below(30);
                let size = rng.uniform(4.0, 60.0);
                for _ in 0..cnt {
                    all.push(bx(&mut rng, size * 0.8, size * 1.2));
                }
                per.push(cnt);
            }
            // Also exercise real grid anchors (many exact distance ties).
            if case % 4 == 0 {
                let (h, w) = (1 + rng.below(6), 1 + rng.below(6));
                all = square_anchors(&[[h, w], [h.div_ceil(2), w.div_ceil(2)]], &[8, 16], 4.0);
                per = vec![h * w, h.div_ceil(2) * w.div_ceil(2)];
            }
            let ng = rng.below(6);
            let gts: Vec<[f32; 4]> = (0..ng)
                .map(|_| {
                    if rng.below(10) == 0 {
                        let x = rng.uniform(0.0, 50.0);
                        [x, x, x, x + rng.uniform(0.0, 10.0)]
                    } else if case % 4 == 0 {
                        // Integer boxes on the grid → duplicate IoUs and centres on edges.
                        let x = rng.below(40) as f32;
                        let y = rng.below(40) as f32;
                        [
                            x,
                            y,
                            x + 1.0 + rng.below(40) as f32,
                            y + 1.0 + rng.below(40) as f32,
                        ]
                    } else {
                        bx(&mut rng, 2.0, 80.0)
                    }
                })
                .collect();
            let topk = 1 + rng.below(12);
            let got = atss_assign(&all, &per, &gts, topk);
            let (gt, best) = brute_force(&all, &per, &gts, topk);
            assert_eq!(got.gt, gt, "case {case}");
            assert_eq!(got.max_iou, best, "case {case}");
            assert!(got.max_iou.iter().all(|v| v.is_finite()));
            total_pos += gt.iter().flatten().count();
        }
        // The comparison is only meaningful if positives actually occur.
        assert!(total_pos > 200, "only {total_pos} positives");
    }

    #[test]
    fn centerness_by_hand() {
        let gt = [0.0, 0.0, 10.0, 10.0];
        // Anchor centred at the gt centre (5,5).
        assert_eq!(centerness_target([3.0, 3.0, 7.0, 7.0], gt), 1.0);
        // Centre (2,5): l=2, r=8, t=b=5 → sqrt(2/8 · 1) = 0.5.
        assert!(close(
            centerness_target([0.0, 3.0, 4.0, 7.0], gt),
            0.5,
            1e-6
        ));
        // Centre (2,8): l=2, r=8, t=8, b=2 → sqrt(0.25 · 0.25) = 0.25.
        assert!(close(
            centerness_target([1.0, 7.0, 3.0, 9.0], gt),
            0.25,
            1e-6
        ));
        // Centre on / outside the border → 0.
        assert_eq!(centerness_target([-1.0, 4.0, 1.0, 6.0], gt), 0.0);
        assert_eq!(centerness_target([20.0, 20.0, 30.0, 30.0], gt), 0.0);
    }
}
