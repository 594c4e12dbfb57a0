//! Customized positive queries (paper §3.3, eq. 4): each auxiliary head's positive anchors
//! become an extra query group for the SAME decoder — content
//! `LN(Linear(PE(B_pos))) + LN(Linear(features at B_pos))`, reference boxes `B_pos` — supervised
//! directly by the head's assignment (no matching). The group runs as its own decoder pass,
//! which is what isolating it from the matching and denoising queries by the attention mask
//! amounts to (and what the official code does).

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Int, Tensor, TensorData};
use codetr_core::model::autocast as ac;

use crate::loss::criterion::Positive;
use codetr_core::model::decoder::box_sine_parts;
use codetr_core::model::encoder::xavier_linear;
use codetr_data::rng::Rng;

/// Sine embedding of normalised boxes `[B, N, 4]` in (x, y, w, h) order, 128-style
/// (temperature 10000, scale 2π, sin/cos interleaved): the official `get_proposal_pos_embed`.
pub fn proposal_sine_embedding(boxes: Tensor<3>, nf: usize) -> Tensor<3> {
    let [b, n, _] = boxes.dims();
    box_sine_parts(boxes, nf).reshape([b, n, 4 * nf])
}

/// The projections of one auxiliary head's positive queries.
#[derive(Module, Debug)]
pub struct PositiveQueryProj {
    /// `2d → d` on the box sine embedding.
    pub pos_trans: Linear,
    pub pos_norm: LayerNorm,
    /// `d → d` on the pyramid feature at the anchor.
    pub feat_trans: Linear,
    pub feat_norm: LayerNorm,
}

impl PositiveQueryProj {
    pub fn new(d: usize, device: &Device) -> Self {
        Self {
            pos_trans: xavier_linear(2 * d, d, device),
            pos_norm: LayerNormConfig::new(d).init(device),
            feat_trans: xavier_linear(d, d, device),
            feat_norm: LayerNormConfig::new(d).init(device),
        }
    }

    /// `boxes` `[B, N, 4]` normalised cxcywh, `feats` `[B, N, d]` (None: box embedding only,
    /// `co.query_features = false`) → content `[B, N, d]`.
    pub fn forward(&self, boxes: Tensor<3>, feats: Option<Tensor<3>>) -> Tensor<3> {
        let d = self.feat_trans.weight.dims()[0];
        let pos = self.pos_norm.forward(ac::linear(
            &self.pos_trans,
            proposal_sine_embedding(boxes, d / 2),
        ));
        match feats {
            Some(f) => pos + self.feat_norm.forward(ac::linear(&self.feat_trans, f)),
            None => pos,
        }
    }
}

/// One head's query group for a batch (host side).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryGroup {
    /// Queries per image (positives, padded with background anchors): max over the batch,
    /// capped at `max_per_image`, at least 9 (as the official code).
    pub size: usize,
    /// Per image, per query: (anchor or token index into the pyramid, normalised cxcywh box).
    pub slots: Vec<Vec<(usize, [f32; 4])>>,
    /// The supervised queries: (image, query) → gt.
    pub positives: Vec<Positive>,
    /// Positives before the cap, summed over the batch (for the queries-per-gt statistic).
    pub uncapped_positives: usize,
}

/// Builds the group: each image's positives (random subset if more than the cap), then random
/// non-positive candidates as background padding (the official `use_zero_padding = False`).
/// `candidates[i]`: image i's candidate boxes (ATSS: all anchors; Faster-RCNN: its sampled
/// RoIs), xyxy canvas pixels; `pairs[i]`: (candidate, gt) positives; `labels/gt_boxes[i]`:
/// its targets; `valid[i]`: its `[h, w]` region of the canvas (boxes are normalised by it, and
/// a candidate centred outside it is no background query).
pub fn build_group(
    candidates: &[&[[f32; 4]]],
    pairs: &[Vec<(usize, usize)>],
    labels: &[&[usize]],
    gt_boxes: &[&[[f32; 4]]],
    valid: &[[f32; 2]],
    max_per_image: usize,
    rng: &mut Rng,
) -> QueryGroup {
    let most = pairs.iter().map(Vec::len).max().unwrap_or(0);
    let fewest = candidates.iter().map(|c| c.len()).min().unwrap_or(0);
    let group = most.min(max_per_image).max(9).min(fewest.max(1));
    let mut slots = Vec::with_capacity(pairs.len());
    let mut positives = Vec::new();
    let mut uncapped = 0;
    for (i, p) in pairs.iter().enumerate() {
        let boxes = candidates[i];
        // Normalised by the image's region of the canvas, as its targets are.
        let [vh, vw] = valid[i];
        let norm = |b: [f32; 4]| {
            [
                (b[0] + b[2]) / 2.0 / vw,
                (b[1] + b[3]) / 2.0 / vh,
                (b[2] - b[0]) / vw,
                (b[3] - b[1]) / vh,
            ]
        };
        // A candidate centred over the padding is no query of this image.
        let inside = |b: [f32; 4]| (b[0] + b[2]) / 2.0 < vw && (b[1] + b[3]) / 2.0 < vh;
        uncapped += p.len();
        let mut chosen: Vec<(usize, usize)> = p.clone();
        if chosen.len() > group {
            rng.shuffle(&mut chosen);
            chosen.truncate(group);
        }
        let mut s: Vec<(usize, [f32; 4])> = Vec::with_capacity(group);
        for (q, &(a, g)) in chosen.iter().enumerate() {
            s.push((a, norm(boxes[a])));
            positives.push(Positive {
                batch: i,
                query: q,
                label: labels[i][g],
                bbox: gt_boxes[i][g],
            });
        }
        let used: std::collections::HashSet<usize> = p.iter().map(|x| x.0).collect();
        let mut negatives: Vec<usize> = (0..boxes.len())
            .filter(|&a| !used.contains(&a) && inside(boxes[a]))
            .collect();
        rng.shuffle(&mut negatives);
        for &a in negatives.iter().take(group - s.len()) {
            s.push((a, norm(boxes[a])));
        }
        // (only when an image has fewer candidates than the group: repeat the last slot)
        while s.len() < group {
            let last = s.last().copied().unwrap_or((0, [0.5; 4]));
            s.push(last);
        }
        slots.push(s);
    }
    QueryGroup {
        size: group,
        slots,
        positives,
        uncapped_positives: uncapped,
    }
}

/// Reference boxes `[B, N, 4]` (clamped like the official inverse_sigmoid round trip) and
/// features `[B, N, d]` of a group. `feats`: `[rows, d]`, image i's candidate k at row
/// `offsets[i] + k` (ATSS: the pyramid tokens; Faster-RCNN: the pooled RoI features).
pub fn group_inputs(
    group: &QueryGroup,
    feats: Tensor<2>,
    offsets: &[usize],
) -> (Tensor<3>, Tensor<3>) {
    let device = feats.device();
    let d = feats.dims()[1];
    let b = group.slots.len();
    let n = group.size;
    let idx: Vec<i64> = group
        .slots
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.iter().map(move |(k, _)| (offsets[i] + k) as i64))
        .collect();
    let boxes: Vec<f32> = group
        .slots
        .iter()
        .flatten()
        .flat_map(|(_, bx)| bx.map(|v| v.clamp(1e-3 / (1.0 + 1e-3), 1.0 / (1.0 + 1e-3))))
        .collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [b * n]), &device);
    let feats = feats.select(0, idx).reshape([b, n, d]);
    let boxes = Tensor::<3>::from_data(TensorData::new(boxes, [b, n, 4]), &device);
    (boxes, feats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_pads_and_keeps_targets() {
        let anchors: Vec<[f32; 4]> = (0..50)
            .map(|i| {
                let x = i as f32;
                [x, x, x + 10.0, x + 10.0]
            })
            .collect();
        let pairs = vec![
            (0..30).map(|a| (a, a % 2)).collect::<Vec<_>>(),
            vec![(40, 0)],
        ];
        let labels: Vec<&[usize]> = vec![&[3, 4], &[7]];
        let g0 = [[0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1]];
        let g1 = [[0.5, 0.5, 0.2, 0.2]];
        let gts: Vec<&[[f32; 4]]> = vec![&g0, &g1];
        let mut rng = Rng::new(0);
        let cands: Vec<&[[f32; 4]]> = vec![&anchors, &anchors];
        let g = build_group(
            &cands,
            &pairs,
            &labels,
            &gts,
            &[[100.0, 100.0]; 2],
            20,
            &mut rng,
        );
        assert_eq!(g.size, 20);
        assert_eq!(g.uncapped_positives, 31);
        assert_eq!(
            g.slots.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![20, 20]
        );
        // image 0: 20 of its 30 positives; image 1: its 1 positive + 19 background anchors
        assert_eq!(g.positives.iter().filter(|p| p.batch == 0).count(), 20);
        let p1: Vec<_> = g.positives.iter().filter(|p| p.batch == 1).collect();
        assert_eq!(p1.len(), 1);
        assert_eq!((p1[0].query, p1[0].label, p1[0].bbox), (0, 7, g1[0]));
        assert_eq!(g.slots[1][0].0, 40);
        assert!(g.slots[1][1..].iter().all(|(a, _)| *a != 40));
        // the positive's label/box follow its anchor's gt
        for p in g.positives.iter().filter(|p| p.batch == 0) {
            let a = g.slots[0][p.query].0;
            assert_eq!(p.label, labels[0][a % 2]);
        }
        // anchor 40 → centre (45, 45)/100, side 0.1
        let b = g.slots[1][0].1;
        assert!((b[0] - 0.45).abs() < 1e-6 && (b[2] - 0.1).abs() < 1e-6);
    }
}
