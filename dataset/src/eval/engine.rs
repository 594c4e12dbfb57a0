//! The COCOeval (iouType='bbox') algorithm, step for step as pycocotools does it, but grouped
//! by category so that one pass over a category's boxes serves every area range, max-dets
//! cut and IoU threshold.
//!
//! Correspondence with pycocotools (`cocoeval.py`):
//! * `_prepare` → [`group`]: boxes bucketed by (category, image), each bucket in file order.
//! * `computeIoU` + `evaluateImg` → [`eval_image`]: dts stably sorted by descending score and
//!   cut at `maxDets[-1]`, the greedy matching for each area range and IoU threshold.
//! * `accumulate` → [`accumulate_category`].
//! * `summarize` → [`super::summarize`].

use std::cmp::Ordering;

/// `np.spacing(1)`.
const EPS: f64 = f64::EPSILON;

/// Evaluation parameters: pycocotools' `Params(iouType='bbox')` defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Params {
    /// `np.linspace(.5, 0.95, 10)`.
    pub iou_thrs: Vec<f64>,
    /// `np.linspace(.0, 1.00, 101)`.
    pub rec_thrs: Vec<f64>,
    /// `[1, 10, 100]`, ascending.
    pub max_dets: Vec<usize>,
    /// `[lo, hi]`, both inclusive: a box is outside when `area < lo || area > hi`.
    pub area_rngs: Vec<[f64; 2]>,
    pub area_labels: Vec<&'static str>,
}

/// `np.linspace(start, stop, num)` bit for bit: `i * step + start`, the last value `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    (0..num)
        .map(|i| {
            if i == num - 1 {
                stop
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

impl Default for Params {
    fn default() -> Self {
        Self {
            iou_thrs: linspace(0.5, 0.95, 10),
            rec_thrs: linspace(0.0, 1.0, 101),
            max_dets: vec![1, 10, 100],
            area_rngs: vec![
                [0.0, 1e10],
                [0.0, 32.0 * 32.0],
                [32.0 * 32.0, 96.0 * 96.0],
                [96.0 * 96.0, 1e10],
            ],
            area_labels: vec!["all", "small", "medium", "large"],
        }
    }
}

/// A ground-truth box of one (image, category) bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gt {
    pub bbox: [f64; 4],
    /// The annotation's `area`, else `w*h`.
    pub area: f64,
    pub crowd: bool,
    pub id: u64,
}

/// A detection of one (image, category) bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dt {
    pub bbox: [f64; 4],
    /// `w*h` (what `loadRes` stores).
    pub area: f64,
    pub score: f64,
}

/// `maskUtils.iou` for boxes (`bbIou` in maskApi.c), same operations in the same order.
/// For a crowd gt the union is the detection's area.
#[inline]
pub fn bbox_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let da = d[2] * d[3];
    let i = w * h;
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

/// `np.argsort(-scores, kind='mergesort')` order: descending score, ties in input order.
#[inline]
fn by_score_desc(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

/// Everything `accumulate` needs from the `evaluateImg` results of one category, for all
/// area ranges at `maxDet = maxDets[-1]`: one entry per kept detection, images in ascending
/// id order, each image's detections by descending score.
#[derive(Debug, Default)]
pub(crate) struct CategoryMatches {
    pub score: Vec<f64>,
    /// Position of the detection within its image's score-sorted list (for the maxDets cut).
    pub rank: Vec<u32>,
    /// `[det * A + a]`: bit t set when `dtMatches[t] != 0`.
    pub matched: Vec<u16>,
    /// `[det * A + a]`: bit t set when `dtIgnore[t]`.
    pub ignored: Vec<u16>,
    /// Per area range: number of non-ignored gts (`npig`).
    pub npig: Vec<u64>,
    /// Whether any image had a gt or a detection of this category (`len(E) > 0`).
    pub any: bool,
}

/// Reusable buffers for [`eval_image`].
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    order: Vec<usize>,
    ious: Vec<f64>,
    gt_order: Vec<usize>,
    gt_ig: Vec<bool>,
    gt_taken: Vec<bool>,
    dt_ig: Vec<u16>,
    dt_m: Vec<u16>,
}

/// `computeIoU` + `evaluateImg` for one (image, category) with at least one gt or dt, for every
/// area range; appends to `out`.
pub(crate) fn eval_image(
    p: &Params,
    gts: &[Gt],
    dts: &[Dt],
    s: &mut Scratch,
    out: &mut CategoryMatches,
) {
    let max_det = p.max_dets.last().copied().unwrap_or(0);
    let n_area = p.area_rngs.len();
    let n_thr = p.iou_thrs.len();
    debug_assert!(n_thr <= 16);

    // Detections by descending score (stable), cut at maxDets[-1].
    s.order.clear();
    s.order.extend(0..dts.len());
    s.order
        .sort_by(|&a, &b| by_score_desc(dts[a].score, dts[b].score));
    s.order.truncate(max_det);
    let nd = s.order.len();
    let ng = gts.len();

    // ious[d * ng + g], gts in their original order.
    s.ious.clear();
    s.ious.reserve(nd * ng);
    for &di in &s.order {
        let d = &dts[di].bbox;
        for g in gts {
            s.ious.push(bbox_iou(d, &g.bbox, g.crowd));
        }
    }

    let base = out.score.len();
    for (r, &di) in s.order.iter().enumerate() {
        out.score.push(dts[di].score);
        out.rank.push(r as u32);
    }
    out.matched.resize(out.matched.len() + nd * n_area, 0);
    out.ignored.resize(out.ignored.len() + nd * n_area, 0);

    for (a, &[lo, hi]) in p.area_rngs.iter().enumerate() {
        // gt _ignore, and gts stably sorted with ignored ones last.
        s.gt_ig.clear();
        s.gt_ig
            .extend(gts.iter().map(|g| g.crowd || g.area < lo || g.area > hi));
        s.gt_order.clear();
        s.gt_order.extend((0..ng).filter(|&g| !s.gt_ig[g]));
        out.npig[a] += s.gt_order.len() as u64;
        s.gt_order.extend((0..ng).filter(|&g| s.gt_ig[g]));

        s.dt_ig.clear();
        s.dt_ig.resize(nd, 0);
        s.dt_m.clear();
        s.dt_m.resize(nd, 0);
        if nd > 0 && ng > 0 {
            for (t, &thr) in p.iou_thrs.iter().enumerate() {
                s.gt_taken.clear();
                s.gt_taken.resize(ng, false);
                for d in 0..nd {
                    let row = &s.ious[d * ng..(d + 1) * ng];
                    let mut best = thr.min(1.0 - 1e-10);
                    let mut m: Option<usize> = None; // position in gt_order
                    for (pos, &g) in s.gt_order.iter().enumerate() {
                        // Already matched and not a crowd: skip.
                        if s.gt_taken[pos] && !gts[g].crowd {
                            continue;
                        }
                        // Matched to a regular gt and reached the ignored ones: stop.
                        if let Some(mp) = m
                            && !s.gt_ig[s.gt_order[mp]]
                            && s.gt_ig[g]
                        {
                            break;
                        }
                        if row[g] < best {
                            continue;
                        }
                        best = row[g];
                        m = Some(pos);
                    }
                    let Some(mp) = m else { continue };
                    let g = s.gt_order[mp];
                    if s.gt_ig[g] {
                        s.dt_ig[d] |= 1 << t;
                    }
                    // pycocotools stores the gt's id in dtMatches and later tests it for
                    // non-zero: a match to a gt with id 0 reads as "unmatched". Kept as is.
                    if gts[g].id != 0 {
                        s.dt_m[d] |= 1 << t;
                    }
                    s.gt_taken[mp] = true;
                }
            }
        }
        // Unmatched detections outside the area range are ignored.
        let all = if n_thr >= 16 {
            u16::MAX
        } else {
            (1u16 << n_thr) - 1
        };
        for (d, &di) in s.order.iter().enumerate() {
            let ar = dts[di].area;
            if ar < lo || ar > hi {
                s.dt_ig[d] |= !s.dt_m[d] & all;
            }
            out.matched[(base + d) * n_area + a] = s.dt_m[d];
            out.ignored[(base + d) * n_area + a] = s.dt_ig[d];
        }
    }
}

/// `accumulate` for one category. `precision` is `[T, R, A, M]` and `recall` `[T, A, M]`,
/// both pre-filled with -1.
///
/// pycocotools builds `rc` and `pr` at every detection, takes the running max of `pr` from the
/// right and reads it where `np.searchsorted(rc, recThrs, 'left')` lands. Only true positives
/// matter: `rc` changes only at a TP, so every landing index is a TP (or 0 for recThr 0, where
/// the envelope is the overall max), and between TPs `pr` only falls (more FPs) or repeats
/// (ignored detections), so each suffix max is reached at a TP. Hence the curve is kept at the
/// TPs only, with `rc` and `pr` computed by the very same float operations — same numbers,
/// a fraction of the divisions.
pub(crate) fn accumulate_category(
    p: &Params,
    cm: &CategoryMatches,
    precision: &mut [f64],
    recall: &mut [f64],
) {
    if !cm.any {
        return;
    }
    let (n_t, n_r, n_a, n_m) = (
        p.iou_thrs.len(),
        p.rec_thrs.len(),
        p.area_rngs.len(),
        p.max_dets.len(),
    );
    debug_assert!(n_t <= 16);
    let all: u16 = if n_t >= 16 {
        u16::MAX
    } else {
        (1u16 << n_t) - 1
    };
    // One stable sort serves every (area, maxDet): the maxDet subsets keep their relative
    // concatenation order, so their stable sorts are subsequences of this one.
    let mut sorted: Vec<u32> = (0..cm.score.len() as u32).collect();
    sorted.sort_by(|&a, &b| by_score_desc(cm.score[a as usize], cm.score[b as usize]));

    // Per threshold: (rc, pr) at each true positive, in score order.
    let mut curves: Vec<Vec<(f64, f64)>> = vec![Vec::new(); n_t];
    for a in 0..n_a {
        let npig = cm.npig[a];
        if npig == 0 {
            continue;
        }
        let npig_f = npig as f64;
        for (m, &max_det) in p.max_dets.iter().enumerate() {
            let mut tp = [0u64; 16];
            let mut fp = [0u64; 16];
            for c in &mut curves {
                c.clear();
            }
            for &i in &sorted {
                let i = i as usize;
                if cm.rank[i] as usize >= max_det {
                    continue;
                }
                let mk = cm.matched[i * n_a + a];
                let ig = cm.ignored[i * n_a + a];
                let tp_bits = mk & !ig & all;
                let fp_bits = !mk & !ig & all;
                fp_bits_add(&mut fp, fp_bits);
                let mut bits = tp_bits;
                while bits != 0 {
                    let t = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    tp[t] += 1;
                    let (tpf, fpf) = (tp[t] as f64, fp[t] as f64);
                    curves[t].push((tpf / npig_f, tpf / (fpf + tpf + EPS)));
                }
            }
            for (t, curve) in curves.iter_mut().enumerate() {
                // rc[-1], or 0 without detections (0 / npig is 0 as well).
                recall[(t * n_a + a) * n_m + m] = tp[t] as f64 / npig_f;
                // Precision envelope, from the right.
                for j in (1..curve.len()).rev() {
                    if curve[j].1 > curve[j - 1].1 {
                        curve[j - 1].1 = curve[j].1;
                    }
                }
                // np.searchsorted(rc, recThrs, side='left'); thresholds past the curve → 0.
                let mut j = 0usize;
                for (r, &x) in p.rec_thrs.iter().enumerate() {
                    while j < curve.len() && curve[j].0 < x {
                        j += 1;
                    }
                    let q = if j < curve.len() { curve[j].1 } else { 0.0 };
                    precision[((t * n_r + r) * n_a + a) * n_m + m] = q;
                }
            }
        }
    }
}

#[inline]
fn fp_bits_add(fp: &mut [u64; 16], bits: u16) {
    let mut bits = bits;
    while bits != 0 {
        let t = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        fp[t] += 1;
    }
}
