//! DINO contrastive denoising (CDN), training only: noised copies of the ground truth become
//! extra decoder queries — positives (small noise, must reconstruct their box and class) and
//! negatives (larger noise, must predict background) — in dynamic groups, isolated from the
//! matching queries and from each other by the self-attention mask.
//!
//! Mirrors Sense-X/Co-DETR `projects/models/query_denoising.py`: groups = num_dn / max_gt,
//! label flip with probability label_noise/2, box corners moved by up to
//! (w/2, h/2)·box_noise (positives within [0, 1)·, negatives within [1, 2)·).

use serde::{Deserialize, Serialize};

use crate::loss::criterion::Positive;
use codetr_data::loader::Target;
use codetr_data::rng::Rng;

/// Denoising settings (Co-DINO: 100 queries, label noise 0.5, box noise 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnConfig {
    /// Total dn queries aimed for; groups = num_dn / (max gt per image), at least 1.
    pub num_dn: usize,
    pub label_noise: f32,
    pub box_noise: f32,
}

impl Default for DnConfig {
    fn default() -> Self {
        Self {
            num_dn: 100,
            label_noise: 0.5,
            box_noise: 1.0,
        }
    }
}

/// The dn part of one batch's decoder input (host side).
#[derive(Debug, Clone, PartialEq)]
pub struct DnQueries {
    /// Queries per group: 2 × max gt per image (positives then negatives).
    pub group_size: usize,
    pub num_groups: usize,
    /// Per image, per dn slot (`num_groups · group_size`): the (noised) class label whose
    /// embedding is the content query, `None` for padding slots.
    pub labels: Vec<Vec<Option<usize>>>,
    /// Per image, per slot: the noised reference box (sigmoid space, cxcywh); padding 0.5.
    pub boxes: Vec<Vec<[f32; 4]>>,
    /// The positives to supervise: (image, slot) → its gt.
    pub positives: Vec<Positive>,
}

impl DnQueries {
    /// Number of dn slots placed before the matching queries.
    pub fn pad_size(&self) -> usize {
        self.group_size * self.num_groups
    }
}

fn inverse_sigmoid_then_sigmoid(v: f32) -> f32 {
    // The official queries are inverse_sigmoid(box, eps=1e-3), decoded by a sigmoid: the
    // round trip only clamps to [1e-3/(1+1e-3), 1/(1+1e-3)].
    let x = v.clamp(0.0, 1.0);
    let logit = (x.max(1e-3) / (1.0 - x).max(1e-3)).ln();
    1.0 / (1.0 + (-logit).exp())
}

/// Corners `[x1, y1, x2, y2]` of `b` (cxcywh) each moved by `±u·(w/2 or h/2)·box_noise`,
/// u ∈ [0, 1) for positives and [1, 2) for negatives, clamped to the image. Negatives may
/// cross over (x1 > x2): their width then decodes to the minimum, as in the official code.
pub fn noisy_corners(b: [f32; 4], negative: bool, box_noise: f32, rng: &mut Rng) -> [f32; 4] {
    let [cx, cy, w, h] = b;
    let mut corners = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
    if box_noise > 0.0 {
        let diff = [w / 2.0, h / 2.0, w / 2.0, h / 2.0];
        for (c, d) in corners.iter_mut().zip(diff) {
            let sign = if rng.below(2) == 0 { -1.0 } else { 1.0 };
            let part = rng.f32() + if negative { 1.0 } else { 0.0 };
            *c = (*c + sign * part * d * box_noise).clamp(0.0, 1.0);
        }
    }
    corners
}

/// Builds the dn queries of a batch; `None` when the batch has no objects or dn is off.
pub fn generate(
    targets: &[Target],
    num_classes: usize,
    cfg: &DnConfig,
    rng: &mut Rng,
) -> Option<DnQueries> {
    let max_gt = targets.iter().map(|t| t.labels.len()).max().unwrap_or(0);
    if max_gt == 0 || cfg.num_dn == 0 || num_classes == 0 {
        return None;
    }
    let num_groups = (cfg.num_dn / max_gt).max(1);
    let group_size = 2 * max_gt;
    let pad = num_groups * group_size;
    let mut labels = vec![vec![None; pad]; targets.len()];
    let mut boxes = vec![vec![[0.5f32; 4]; pad]; targets.len()];
    let mut positives = Vec::new();
    for g in 0..num_groups {
        for negative in [false, true] {
            let base = g * group_size + if negative { max_gt } else { 0 };
            for (i, t) in targets.iter().enumerate() {
                for (k, (&label, b)) in t.labels.iter().zip(&t.boxes).enumerate() {
                    let slot = base + k;
                    let noisy_label = if rng.f32() < cfg.label_noise * 0.5 {
                        rng.below(num_classes)
                    } else {
                        label
                    };
                    labels[i][slot] = Some(noisy_label);
                    let corners = noisy_corners(*b, negative, cfg.box_noise, rng);
                    let nb = [
                        (corners[0] + corners[2]) / 2.0,
                        (corners[1] + corners[3]) / 2.0,
                        corners[2] - corners[0],
                        corners[3] - corners[1],
                    ];
                    boxes[i][slot] = nb.map(inverse_sigmoid_then_sigmoid);
                    if !negative {
                        positives.push(Positive {
                            batch: i,
                            query: slot,
                            label,
                            bbox: *b,
                        });
                    }
                }
            }
        }
    }
    Some(DnQueries {
        group_size,
        num_groups,
        labels,
        boxes,
        positives,
    })
}

/// The decoder's self-attention mask, true = blocked, over the query layout
/// `[dn groups | matching queries | positive-query groups]`:
/// - a dn group sees itself and the matching queries, not the other dn groups (DINO);
/// - matching queries see only themselves (never the dn answers);
/// - each positive-query group (Co-DETR) sees only itself, and nothing else sees it — the
///   same as running it through the decoder on its own.
///
/// Returns (side, row-major mask).
pub fn attention_mask(
    dn: Option<(usize, usize)>,
    num_matching: usize,
    positive_groups: &[usize],
) -> (usize, Vec<bool>) {
    let (groups, size) = dn.unwrap_or((0, 0));
    let pad = groups * size;
    let n = pad + num_matching + positive_groups.iter().sum::<usize>();
    let mut mask = vec![true; n * n];
    let mut open = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
        for i in rows {
            for j in cols.clone() {
                mask[i * n + j] = false;
            }
        }
    };
    for g in 0..groups {
        let r = g * size..(g + 1) * size;
        open(r.clone(), r.clone());
        open(r, pad..pad + num_matching);
    }
    open(pad..pad + num_matching, pad..pad + num_matching);
    let mut start = pad + num_matching;
    for &len in positive_groups {
        open(start..start + len, start..start + len);
        start += len;
    }
    (n, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(n: usize) -> Target {
        Target {
            image_id: 0,
            orig_size: [100, 100],
            labels: (0..n).map(|i| i % 3).collect(),
            boxes: (0..n)
                .map(|i| [0.2 + 0.1 * i as f32, 0.5, 0.2, 0.3])
                .collect(),
        }
    }

    #[test]
    fn groups_slots_and_noise_ranges() {
        let mut rng = Rng::new(0);
        let cfg = DnConfig::default();
        let dn = generate(&[target(4), target(1)], 3, &cfg, &mut rng).unwrap();
        assert_eq!(dn.num_groups, 25); // 100 / 4
        assert_eq!(dn.group_size, 8);
        assert_eq!(dn.pad_size(), 200);
        // image 1 has one gt: in each group slot 0 (positive) and slot 4 (negative) are used.
        for g in 0..dn.num_groups {
            let s = g * 8;
            assert!(dn.labels[1][s].is_some() && dn.labels[1][s + 4].is_some());
            assert!(dn.labels[1][s + 1].is_none() && dn.labels[1][s + 5].is_none());
            assert_eq!(dn.boxes[1][s + 1], [0.5; 4]);
        }
        assert_eq!(dn.positives.len(), 25 * 5);
        // decoded positive boxes stay within half a side of the gt on every corner
        let t = target(4);
        let corners = |b: [f32; 4]| {
            [
                b[0] - b[2] / 2.0,
                b[1] - b[3] / 2.0,
                b[0] + b[2] / 2.0,
                b[1] + b[3] / 2.0,
            ]
        };
        for g in 0..dn.num_groups {
            for k in 0..4 {
                let gt = corners(t.boxes[k]);
                let p = corners(dn.boxes[0][g * 8 + k]);
                let [_, _, w, h] = t.boxes[k];
                let d = [w / 2.0, h / 2.0, w / 2.0, h / 2.0];
                for j in 0..4 {
                    assert!(
                        (p[j] - gt[j]).abs() <= d[j] + 2e-3,
                        "positive {p:?} vs {gt:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn corner_noise_ranges() {
        let mut rng = Rng::new(9);
        let b = [0.5, 0.5, 0.2, 0.4];
        let gt = [0.4, 0.3, 0.6, 0.7];
        let d = [0.1, 0.2, 0.1, 0.2];
        for _ in 0..500 {
            let p = noisy_corners(b, false, 1.0, &mut rng);
            let n = noisy_corners(b, true, 1.0, &mut rng);
            for j in 0..4 {
                assert!((p[j] - gt[j]).abs() < d[j] + 1e-6, "positive {p:?}");
                let clamped = n[j] == 0.0 || n[j] == 1.0;
                let moved = (n[j] - gt[j]).abs();
                assert!(
                    clamped || (moved >= d[j] - 1e-6 && moved < 2.0 * d[j] + 1e-6),
                    "negative {n:?}"
                );
            }
        }
        assert_eq!(noisy_corners(b, true, 0.0, &mut rng), gt);
    }

    #[test]
    fn label_noise_rate_is_half_the_setting() {
        let mut rng = Rng::new(1);
        let cfg = DnConfig {
            num_dn: 1000,
            label_noise: 0.5,
            box_noise: 0.0,
        };
        let t = Target {
            image_id: 0,
            orig_size: [10, 10],
            labels: vec![0; 10],
            boxes: vec![[0.5, 0.5, 0.2, 0.2]; 10],
        };
        let dn = generate(&[t], 1000, &cfg, &mut rng).unwrap();
        let flipped = dn.labels[0].iter().filter(|l| **l != Some(0)).count();
        let total = dn.labels[0].len();
        let rate = flipped as f64 / total as f64;
        // P(flip) = 0.25, and a flip lands on label 0 again with prob 1/1000.
        assert!((rate - 0.25).abs() < 0.02, "{rate}");
    }

    #[test]
    fn no_objects_no_dn_and_mask_blocks() {
        let mut rng = Rng::new(2);
        assert!(generate(&[target(0)], 3, &DnConfig::default(), &mut rng).is_none());
        // 2 dn groups of 2, 3 matching queries, one positive group of 2: side 9.
        let (n, m) = attention_mask(Some((2, 2)), 3, &[2]);
        assert_eq!(n, 9);
        let blocked = |i: usize, j: usize| m[i * n + j];
        assert!(!blocked(0, 1) && blocked(0, 2) && !blocked(0, 4)); // dn g0: self + matching
        assert!(blocked(2, 1) && !blocked(3, 6)); // dn g1: not g0, sees matching
        assert!(blocked(4, 0) && !blocked(4, 6) && blocked(4, 7)); // matching: only itself
        assert!(blocked(7, 4) && blocked(7, 0) && !blocked(8, 7)); // positive group isolated
    }
}
