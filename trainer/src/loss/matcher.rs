//! One-to-one (Hungarian) matching between DETR queries and ground-truth boxes.
//!
//! Matching runs on the host in `f64`: the cost matrices are tiny
//! (`num_queries × num_gt` per image) and a deterministic exact solver is
//! worth more here than keeping the data on the device (the step reads back
//! only the gt labels' logit columns and the boxes). The box cost is
//! `geometry::boxes`' f64 IoU/GIoU.

use std::fmt;

use codetr_core::geometry::boxes::{cxcywh_to_xyxy_f64, iou_giou_f64};

/// Why a matching could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchError {
    /// A buffer length disagrees with the dimensions it was passed with.
    Shape {
        /// Which argument is wrong.
        name: &'static str,
        /// Length implied by the dimensions (`usize::MAX` if that overflows).
        expected: usize,
        /// Length actually supplied.
        actual: usize,
    },
    /// The cost matrix holds NaN or ±inf at `(row, col)`.
    NonFinite { row: usize, col: usize },
    /// An input tensor holds NaN or ±inf at flat position `index`.
    NonFiniteInput { name: &'static str, index: usize },
    /// A ground-truth label is not a valid class index.
    LabelOutOfRange {
        gt: usize,
        label: usize,
        num_classes: usize,
    },
    /// Costs are so large that the dual potentials could overflow `f64`.
    Overflow,
}

impl fmt::Display for MatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shape {
                name,
                expected,
                actual,
            } => write!(f, "`{name}` has length {actual}, expected {expected}"),
            Self::NonFinite { row, col } => {
                write!(f, "cost matrix entry ({row}, {col}) is not finite")
            }
            Self::NonFiniteInput { name, index } => {
                write!(f, "`{name}`[{index}] is not finite")
            }
            Self::LabelOutOfRange {
                gt,
                label,
                num_classes,
            } => write!(
                f,
                "ground-truth {gt} has label {label}, but there are only {num_classes} classes"
            ),
            Self::Overflow => write!(f, "cost magnitudes too large for an exact assignment"),
        }
    }
}

impl std::error::Error for MatchError {}

/// Minimum-total-cost assignment on a dense row-major `rows × cols` matrix.
///
/// Rectangular matrices are allowed; exactly `min(rows, cols)` pairs
/// `(row, col)` are returned, sorted by row, matching
/// `scipy.optimize.linear_sum_assignment`. Runs in `O(n² m)` with
/// `n = min(rows, cols)`, `m = max(rows, cols)`.
///
/// # Errors
///
/// [`MatchError::Shape`] if `cost.len() != rows * cols`,
/// [`MatchError::NonFinite`] at the first NaN/±inf entry (row-major), and
/// [`MatchError::Overflow`] if the magnitudes leave no headroom in `f64`.
pub fn linear_sum_assignment(
    cost: &[f64],
    rows: usize,
    cols: usize,
) -> Result<Vec<(usize, usize)>, MatchError> {
    check_len("cost", cost.len(), rows, cols)?;
    if let Some(i) = cost.iter().position(|c| !c.is_finite()) {
        return Err(MatchError::NonFinite {
            row: i / cols,
            col: i % cols,
        });
    }
    if rows == 0 || cols == 0 {
        return Ok(Vec::new());
    }
    // Dual potentials stay within a small multiple of (n + m) · max|c|;
    // refusing up front is better than silently returning a NaN-driven answer.
    let max_abs = cost.iter().fold(0.0_f64, |acc, c| acc.max(c.abs()));
    if !(max_abs * 4.0 * (rows + cols) as f64).is_finite() {
        return Err(MatchError::Overflow);
    }

    // The solver needs at least as many columns as rows, so solve the
    // transposed problem when the matrix is tall.
    let mut pairs = if rows <= cols {
        solve_wide(cost, rows, cols)?
    } else {
        let transposed: Vec<f64> = (0..cols)
            .flat_map(|c| (0..rows).map(move |r| cost[r * cols + c]))
            .collect();
        solve_wide(&transposed, cols, rows)?
            .into_iter()
            .map(|(c, r)| (r, c))
            .collect()
    };
    pairs.sort_unstable();
    Ok(pairs)
}

/// Shortest-augmenting-path Hungarian algorithm with potentials (the
/// e-maxx formulation) for `n <= m`. Index 0 of the column arrays is a
/// virtual column that roots each augmenting search, hence the 1-based rows.
fn solve_wide(a: &[f64], n: usize, m: usize) -> Result<Vec<(usize, usize)>, MatchError> {
    let mut u = vec![0.0_f64; n + 1];
    let mut v = vec![0.0_f64; m + 1];
    // p[j]: 1-based row assigned to column j, 0 when free.
    let mut p = vec![0_usize; m + 1];
    // way[j]: previous column on the shortest path to column j.
    let mut way = vec![0_usize; m + 1];
    let mut minv = vec![0.0_f64; m + 1];
    let mut used = vec![false; m + 1];

    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        minv.fill(f64::INFINITY);
        used.fill(false);
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let row = &a[(i0 - 1) * m..i0 * m];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=m {
                if used[j] {
                    continue;
                }
                let cur = row[j - 1] - u[i0] - v[j];
                if cur < minv[j] {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if minv[j] < delta {
                    delta = minv[j];
                    j1 = j;
                }
            }
            // With finite, pre-checked costs some free column always exists
            // (n <= m) and has a finite reduced cost; this only guards
            // against looping on numerical garbage.
            if j1 == 0 || !delta.is_finite() {
                return Err(MatchError::Overflow);
            }
            for (j, (&is_used, mv)) in used.iter().zip(minv.iter_mut()).enumerate() {
                if is_used {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    *mv -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        // Flip the augmenting path back to the virtual root.
        while j0 != 0 {
            let prev = way[j0];
            p[j0] = p[prev];
            j0 = prev;
        }
    }

    Ok(p.iter()
        .enumerate()
        .skip(1)
        .filter(|&(_, &row)| row != 0)
        .map(|(j, &row)| (row - 1, j - 1))
        .collect())
}

/// Weights of the matching cost terms (mmdet `HungarianAssigner` setup).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchCosts {
    /// Weight of the focal classification cost.
    pub class: f32,
    /// Weight of the L1 distance between `cxcywh` boxes.
    pub bbox: f32,
    /// Weight of the negative generalized IoU.
    pub giou: f32,
    /// Focal-loss alpha used inside the classification cost.
    pub alpha: f32,
    /// Focal-loss gamma used inside the classification cost.
    pub gamma: f32,
}

impl Default for MatchCosts {
    /// The Co-DINO / DINO matcher weights.
    fn default() -> Self {
        Self {
            class: 2.0,
            bbox: 5.0,
            giou: 2.0,
            alpha: 0.25,
            gamma: 2.0,
        }
    }
}

/// mmdet `FocalLossCost` epsilon inside the logs.
const FOCAL_EPS: f64 = 1e-12;

fn focal_cost(logit: f64, alpha: f64, gamma: f64) -> f64 {
    let p = 1.0 / (1.0 + (-logit).exp());
    let neg = -(1.0 - p + FOCAL_EPS).ln() * (1.0 - alpha) * p.powf(gamma);
    let pos = -(p + FOCAL_EPS).ln() * alpha * (1.0 - p).powf(gamma);
    pos - neg
}

fn check_len(name: &'static str, data_len: usize, n: usize, k: usize) -> Result<(), MatchError> {
    let expected = n.saturating_mul(k);
    if data_len == expected {
        Ok(())
    } else {
        Err(MatchError::Shape {
            name,
            expected,
            actual: data_len,
        })
    }
}

fn check_finite(name: &'static str, data: &[f32]) -> Result<(), MatchError> {
    match data.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(MatchError::NonFiniteInput { name, index }),
        None => Ok(()),
    }
}

fn box_at(boxes: &[f32], i: usize) -> [f64; 4] {
    let b = &boxes[4 * i..4 * i + 4];
    [b[0], b[1], b[2], b[3]].map(f64::from)
}

/// DETR one-to-one matching for a single image.
///
/// `logits` is row-major `[num_queries, num_classes]` (raw, pre-sigmoid),
/// `boxes` is `[num_queries, 4]` normalized `cxcywh`, `gt_labels` is `[G]` and
/// `gt_boxes` is `[G, 4]` normalized `cxcywh`. The cost of pairing query `q`
/// with ground truth `g` is
/// `class · focal(q, label_g) + bbox · L1(q, g) + giou · (−GIoU(q, g))`.
/// Returns `min(num_queries, G)` pairs `(query, gt)` sorted by query.
///
/// # Errors
///
/// [`MatchError::Shape`] on a buffer length that disagrees with the counts,
/// [`MatchError::NonFiniteInput`] on NaN/±inf in any input (checked even when
/// `G == 0`), [`MatchError::LabelOutOfRange`] for a label `>= num_classes`,
/// and otherwise whatever [`linear_sum_assignment`] reports.
pub fn hungarian_match(
    logits: &[f32],
    boxes: &[f32],
    num_queries: usize,
    num_classes: usize,
    gt_labels: &[usize],
    gt_boxes: &[f32],
    costs: &MatchCosts,
) -> Result<Vec<(usize, usize)>, MatchError> {
    let num_gt = gt_labels.len();
    check_len("logits", logits.len(), num_queries, num_classes)?;
    check_len("boxes", boxes.len(), num_queries, 4)?;
    check_len("gt_boxes", gt_boxes.len(), num_gt, 4)?;
    // Validate everything even when there is nothing to match, so corrupt
    // predictions surface on images without objects too.
    check_finite("logits", logits)?;
    check_finite("boxes", boxes)?;
    check_finite("gt_boxes", gt_boxes)?;
    if let Some((gt, &label)) = gt_labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l >= num_classes)
    {
        return Err(MatchError::LabelOutOfRange {
            gt,
            label,
            num_classes,
        });
    }
    // The class cost only ever looks at the gt labels' columns.
    let label_logits: Vec<f32> = (0..num_queries)
        .flat_map(|q| {
            let row = &logits[q * num_classes..(q + 1) * num_classes];
            gt_labels.iter().map(move |&l| row[l])
        })
        .collect();
    match_label_logits(&label_logits, boxes, num_queries, gt_boxes, costs)
}

/// [`hungarian_match`] given only the logits at the gt labels: `label_logits` is row-major
/// `[num_queries, G]` with entry `(q, g)` = `logits[q, label_g]`. This is what the training
/// step reads back from the device: `Q × G` values instead of `Q × C`. Same cost, same pairs.
///
/// # Errors
///
/// [`MatchError::Shape`] and [`MatchError::NonFiniteInput`] on the given buffers, and otherwise
/// whatever [`linear_sum_assignment`] reports.
pub fn match_label_logits(
    label_logits: &[f32],
    boxes: &[f32],
    num_queries: usize,
    gt_boxes: &[f32],
    costs: &MatchCosts,
) -> Result<Vec<(usize, usize)>, MatchError> {
    let num_gt = gt_boxes.len() / 4;
    check_len("gt_boxes", gt_boxes.len(), num_gt, 4)?;
    check_len("label_logits", label_logits.len(), num_queries, num_gt)?;
    check_len("boxes", boxes.len(), num_queries, 4)?;
    check_finite("label_logits", label_logits)?;
    check_finite("boxes", boxes)?;
    check_finite("gt_boxes", gt_boxes)?;
    if num_queries == 0 || num_gt == 0 {
        return Ok(Vec::new());
    }

    let w_class = f64::from(costs.class);
    let w_bbox = f64::from(costs.bbox);
    let w_giou = f64::from(costs.giou);
    let alpha = f64::from(costs.alpha);
    let gamma = f64::from(costs.gamma);

    let gts: Vec<([f64; 4], [f64; 4])> = (0..num_gt)
        .map(|g| {
            let b = box_at(gt_boxes, g);
            (b, cxcywh_to_xyxy_f64(b))
        })
        .collect();

    let mut cost = Vec::with_capacity(num_queries * num_gt);
    for q in 0..num_queries {
        let pred = box_at(boxes, q);
        let pred_xyxy = cxcywh_to_xyxy_f64(pred);
        let row_logits = &label_logits[q * num_gt..(q + 1) * num_gt];
        cost.extend(row_logits.iter().zip(&gts).map(|(&logit, (gt, gt_xyxy))| {
            let cls = focal_cost(f64::from(logit), alpha, gamma);
            let l1: f64 = pred.iter().zip(gt).map(|(p, t)| (p - t).abs()).sum();
            let (_, giou) = iou_giou_f64(pred_xyxy, *gt_xyxy);
            w_class * cls + w_bbox * l1 - w_giou * giou
        }));
    }
    linear_sum_assignment(&cost, num_queries, num_gt)
}

#[cfg(test)]
mod tests {
    use super::*;

    use codetr_data::rng::Rng;

    fn range(r: &mut Rng, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * r.f64()
    }

    /// Minimum over all injections of the smaller side into the larger.
    fn brute_force_min(cost: &[f64], rows: usize, cols: usize) -> f64 {
        fn rec(
            cost: &[f64],
            rows: usize,
            cols: usize,
            r: usize,
            used: &mut Vec<bool>,
            acc: f64,
            best: &mut f64,
        ) {
            if r == rows {
                *best = best.min(acc);
                return;
            }
            for c in 0..cols {
                if !used[c] {
                    used[c] = true;
                    rec(
                        cost,
                        rows,
                        cols,
                        r + 1,
                        used,
                        acc + cost[r * cols + c],
                        best,
                    );
                    used[c] = false;
                }
            }
        }
        let (m, r, c) = if rows <= cols {
            (cost.to_vec(), rows, cols)
        } else {
            let t = (0..cols)
                .flat_map(|c| (0..rows).map(move |r| cost[r * cols + c]))
                .collect();
            (t, cols, rows)
        };
        let mut best = f64::INFINITY;
        rec(&m, r, c, 0, &mut vec![false; c], 0.0, &mut best);
        best
    }

    /// Asserts a valid injective, row-sorted assignment of size min(rows, cols)
    /// and returns its total cost.
    fn check_assignment(pairs: &[(usize, usize)], cost: &[f64], rows: usize, cols: usize) -> f64 {
        assert_eq!(pairs.len(), rows.min(cols), "pairs: {pairs:?}");
        assert!(
            pairs.windows(2).all(|w| w[0].0 < w[1].0),
            "not sorted: {pairs:?}"
        );
        let mut col_used = vec![false; cols];
        for &(r, c) in pairs {
            assert!(r < rows && c < cols, "out of range: {pairs:?}");
            assert!(!col_used[c], "column reused: {pairs:?}");
            col_used[c] = true;
        }
        pairs.iter().map(|&(r, c)| cost[r * cols + c]).sum()
    }

    fn assert_optimal(cost: &[f64], rows: usize, cols: usize) {
        let pairs = linear_sum_assignment(cost, rows, cols).expect("finite input");
        let got = check_assignment(&pairs, cost, rows, cols);
        let want = brute_force_min(cost, rows, cols);
        let tol = 1e-9 * want.abs().max(1.0);
        assert!(
            (got - want).abs() <= tol,
            "{rows}x{cols}: got {got}, brute force {want}, pairs {pairs:?}, cost {cost:?}"
        );
    }

    #[test]
    fn lsa_matches_brute_force_on_random_matrices() {
        let mut rng = Rng::new(0x5EED_0001);
        for rows in 1..=8 {
            for cols in 1..=8 {
                for _ in 0..4 {
                    let cost: Vec<f64> = (0..rows * cols).map(|_| rng.f64()).collect();
                    assert_optimal(&cost, rows, cols);
                }
            }
        }
    }

    #[test]
    fn lsa_matches_brute_force_with_ties() {
        let mut rng = Rng::new(0x5EED_0002);
        for rows in 1..=8 {
            for cols in 1..=8 {
                for _ in 0..4 {
                    let cost: Vec<f64> = (0..rows * cols).map(|_| rng.below(3) as f64).collect();
                    assert_optimal(&cost, rows, cols);
                }
            }
        }
    }

    #[test]
    fn lsa_handles_large_and_negative_costs() {
        let mut rng = Rng::new(0x5EED_0003);
        for (rows, cols) in [(5, 5), (3, 7), (7, 3), (8, 8), (6, 8), (8, 6)] {
            for _ in 0..3 {
                let big: Vec<f64> = (0..rows * cols)
                    .map(|_| range(&mut rng, -1e6, 1e6))
                    .collect();
                assert_optimal(&big, rows, cols);
                let neg: Vec<f64> = (0..rows * cols)
                    .map(|_| range(&mut rng, -10.0, -1.0))
                    .collect();
                assert_optimal(&neg, rows, cols);
            }
        }
    }

    #[test]
    fn lsa_known_answer() {
        // scipy doc example: optimum 5 via (0,1), (1,0), (2,2).
        let cost = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        assert_eq!(
            linear_sum_assignment(&cost, 3, 3).unwrap(),
            vec![(0, 1), (1, 0), (2, 2)]
        );
    }

    #[test]
    fn lsa_degenerate_shapes() {
        assert_eq!(linear_sum_assignment(&[], 0, 5).unwrap(), vec![]);
        assert_eq!(linear_sum_assignment(&[], 5, 0).unwrap(), vec![]);
        assert_eq!(linear_sum_assignment(&[], 0, 0).unwrap(), vec![]);
        assert_eq!(linear_sum_assignment(&[-3.5], 1, 1).unwrap(), vec![(0, 0)]);
        let equal = vec![7.0; 4 * 6];
        let pairs = linear_sum_assignment(&equal, 4, 6).unwrap();
        assert_eq!(check_assignment(&pairs, &equal, 4, 6), 28.0);
        let pairs = linear_sum_assignment(&equal, 6, 4).unwrap();
        assert_eq!(check_assignment(&pairs, &equal, 6, 4), 28.0);
    }

    #[test]
    fn lsa_rejects_non_finite_and_bad_shapes() {
        let mut cost = vec![1.0; 3 * 4];
        cost[2 * 4 + 1] = f64::NAN;
        assert_eq!(
            linear_sum_assignment(&cost, 3, 4),
            Err(MatchError::NonFinite { row: 2, col: 1 })
        );
        cost[2 * 4 + 1] = 1.0;
        cost[4 + 3] = f64::INFINITY;
        assert_eq!(
            linear_sum_assignment(&cost, 3, 4),
            Err(MatchError::NonFinite { row: 1, col: 3 })
        );
        cost[4 + 3] = f64::NEG_INFINITY;
        assert_eq!(
            linear_sum_assignment(&cost, 3, 4),
            Err(MatchError::NonFinite { row: 1, col: 3 })
        );
        assert_eq!(
            linear_sum_assignment(&[1.0; 5], 2, 3),
            Err(MatchError::Shape {
                name: "cost",
                expected: 6,
                actual: 5
            })
        );
        assert!(matches!(
            linear_sum_assignment(&[1.0], 0, 5),
            Err(MatchError::Shape { .. })
        ));
        assert!(matches!(
            linear_sum_assignment(&[1.0], usize::MAX, 2),
            Err(MatchError::Shape { .. })
        ));
        assert_eq!(
            linear_sum_assignment(&[1e308, 0.0, 0.0, 1e308], 2, 2),
            Err(MatchError::Overflow)
        );
    }

    #[test]
    fn match_costs_default_is_dino() {
        let c = MatchCosts::default();
        assert_eq!(
            (c.class, c.bbox, c.giou, c.alpha, c.gamma),
            (2.0, 5.0, 2.0, 0.25, 2.0)
        );
    }

    #[test]
    fn hungarian_obvious_case() {
        let gt_boxes = [0.3, 0.3, 0.2, 0.2, 0.7, 0.7, 0.2, 0.2];
        let gt_labels = [1, 0];
        #[rustfmt::skip]
        let logits = [
            -5.0, -5.0,
            5.0, -5.0,
            -5.0, 5.0,
        ];
        #[rustfmt::skip]
        let boxes = [
            0.5, 0.5, 0.1, 0.1,
            0.7, 0.7, 0.2, 0.2,
            0.3, 0.3, 0.2, 0.2,
        ];
        let pairs = hungarian_match(
            &logits,
            &boxes,
            3,
            2,
            &gt_labels,
            &gt_boxes,
            &MatchCosts::default(),
        )
        .unwrap();
        assert_eq!(pairs, vec![(1, 1), (2, 0)]);
    }

    #[test]
    fn hungarian_edge_cases() {
        let costs = MatchCosts::default();
        let logits = [0.0_f32; 3 * 2];
        let boxes = [0.5_f32; 3 * 4];
        assert_eq!(
            hungarian_match(&logits, &boxes, 3, 2, &[], &[], &costs).unwrap(),
            vec![]
        );

        // More ground truths than queries: every query is matched once.
        let gt_labels = [0, 1, 0, 1];
        let gt_boxes = [
            0.2, 0.2, 0.1, 0.1, 0.4, 0.4, 0.1, 0.1, 0.6, 0.6, 0.1, 0.1, 0.8, 0.8, 0.1, 0.1,
        ];
        let pairs = hungarian_match(
            &logits[..4],
            &boxes[..8],
            2,
            2,
            &gt_labels,
            &gt_boxes,
            &costs,
        )
        .unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!((pairs[0].0, pairs[1].0), (0, 1));
        assert_ne!(pairs[0].1, pairs[1].1);

        let mut bad = logits;
        bad[3] = f32::NAN;
        assert_eq!(
            hungarian_match(&bad, &boxes, 3, 2, &[0], &gt_boxes[..4], &costs),
            Err(MatchError::NonFiniteInput {
                name: "logits",
                index: 3
            })
        );
        // Corrupt predictions are reported even with nothing to match.
        assert!(hungarian_match(&bad, &boxes, 3, 2, &[], &[], &costs).is_err());
        let mut bad_boxes = boxes;
        bad_boxes[5] = f32::NAN;
        assert!(hungarian_match(&logits, &bad_boxes, 3, 2, &[0], &gt_boxes[..4], &costs).is_err());
        let mut bad_gt = [0.5_f32; 4];
        bad_gt[2] = f32::INFINITY;
        assert!(hungarian_match(&logits, &boxes, 3, 2, &[0], &bad_gt, &costs).is_err());

        assert_eq!(
            hungarian_match(&logits, &boxes, 3, 2, &[0, 2], &gt_boxes[..8], &costs),
            Err(MatchError::LabelOutOfRange {
                gt: 1,
                label: 2,
                num_classes: 2
            })
        );
        assert!(matches!(
            hungarian_match(&logits, &boxes, 3, 2, &[0, 1], &gt_boxes[..4], &costs),
            Err(MatchError::Shape {
                name: "gt_boxes",
                ..
            })
        ));
        assert!(matches!(
            hungarian_match(&logits, &boxes[..11], 3, 2, &[0], &gt_boxes[..4], &costs),
            Err(MatchError::Shape { name: "boxes", .. })
        ));
    }

    /// Written independently of the module: plain formulas, no shared helpers.
    fn reference_cost(
        logits: &[f32],
        boxes: &[f32],
        q_n: usize,
        c_n: usize,
        labels: &[usize],
        gt: &[f32],
        w: &MatchCosts,
    ) -> Vec<f64> {
        let (wc, wb, wg) = (w.class as f64, w.bbox as f64, w.giou as f64);
        let (alpha, gamma) = (w.alpha as f64, w.gamma as f64);
        let g_n = labels.len();
        let mut out = vec![0.0; q_n * g_n];
        for q in 0..q_n {
            for g in 0..g_n {
                let x = logits[q * c_n + labels[g]] as f64;
                let p = 1.0 / (1.0 + (-x).exp());
                let neg = -(1.0 - p + 1e-12).ln() * (1.0 - alpha) * p.powf(gamma);
                let pos = -(p + 1e-12).ln() * alpha * (1.0 - p).powf(gamma);
                let pb: Vec<f64> = boxes[q * 4..q * 4 + 4].iter().map(|&v| v as f64).collect();
                let tb: Vec<f64> = gt[g * 4..g * 4 + 4].iter().map(|&v| v as f64).collect();
                let l1 = (0..4).map(|k| (pb[k] - tb[k]).abs()).sum::<f64>();
                let (ax0, ay0) = (pb[0] - pb[2] / 2.0, pb[1] - pb[3] / 2.0);
                let (ax1, ay1) = (pb[0] + pb[2] / 2.0, pb[1] + pb[3] / 2.0);
                let (bx0, by0) = (tb[0] - tb[2] / 2.0, tb[1] - tb[3] / 2.0);
                let (bx1, by1) = (tb[0] + tb[2] / 2.0, tb[1] + tb[3] / 2.0);
                let iw = (ax1.min(bx1) - ax0.max(bx0)).max(0.0);
                let ih = (ay1.min(by1) - ay0.max(by0)).max(0.0);
                let inter = iw * ih;
                let union = pb[2] * pb[3] + tb[2] * tb[3] - inter;
                let hull = (ax1.max(bx1) - ax0.min(bx0)) * (ay1.max(by1) - ay0.min(by0));
                let giou = inter / union - (hull - union) / hull;
                out[q * g_n + g] = wc * (pos - neg) + wb * l1 - wg * giou;
            }
        }
        out
    }

    #[test]
    fn hungarian_matches_brute_force() {
        let mut rng = Rng::new(0x5EED_0004);
        let costs = MatchCosts::default();
        let c_n = 3;
        for q_n in 1..=6 {
            for g_n in 0..=6 {
                for _ in 0..5 {
                    let logits: Vec<f32> = (0..q_n * c_n)
                        .map(|_| range(&mut rng, -4.0, 4.0) as f32)
                        .collect();
                    let mut random_boxes = |n: usize| -> Vec<f32> {
                        (0..n)
                            .flat_map(|_| {
                                [
                                    range(&mut rng, 0.2, 0.8),
                                    range(&mut rng, 0.2, 0.8),
                                    range(&mut rng, 0.05, 0.4),
                                    range(&mut rng, 0.05, 0.4),
                                ]
                            })
                            .map(|v| v as f32)
                            .collect()
                    };
                    let boxes = random_boxes(q_n);
                    let gt_boxes = random_boxes(g_n);
                    let labels: Vec<usize> = (0..g_n).map(|_| rng.below(c_n)).collect();
                    let pairs =
                        hungarian_match(&logits, &boxes, q_n, c_n, &labels, &gt_boxes, &costs)
                            .unwrap();
                    let cost =
                        reference_cost(&logits, &boxes, q_n, c_n, &labels, &gt_boxes, &costs);
                    let got = check_assignment(&pairs, &cost, q_n, g_n);
                    let want = if g_n == 0 {
                        0.0
                    } else {
                        brute_force_min(&cost, q_n, g_n)
                    };
                    assert!(
                        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                        "Q={q_n} G={g_n}: got {got}, brute force {want}"
                    );
                }
            }
        }
    }
}
