//! Co-DETR's auxiliary branches (paper §3.2–3.3): each one a head on the adapter pyramid with
//! its own one-to-many assignment and loss, whose positives become a group of customized
//! positive queries through the shared decoder. One type per branch; the step's loss adds each
//! branch's part in turn (paper eq. 6: λ2 · the head's loss, λ1 · its positive queries' loss).
//!
//! The branches borrow their parameters from `TrainHeads`, whose layout is the checkpoint's.

use burn::tensor::Tensor;

use super::codetr::CoDetr;
use super::config::FitConfig;
use super::terms::TermLog;
use crate::auxiliary::atss_head::{AtssHead, assign, atss_loss, pyramid_anchors};
use crate::auxiliary::positive_queries::{PositiveQueryProj, build_group, group_inputs};
use crate::auxiliary::roi_head::{RoiHead, roi_features, roi_loss, sample_rois};
use crate::auxiliary::rpn_head::{RpnHead, proposals, pyramid_rpn_anchors, rpn_loss};
use crate::error::Result;
use crate::loss::criterion::assigned_loss;
use codetr_core::geometry::anchors::valid_anchor_flags;
use codetr_core::model::padding::Padding;
use codetr_data::loader::Target;
use codetr_data::rng::Rng;

/// What every branch sees of the step: the adapter pyramid, the encoder memory (for the
/// positive queries' decoder pass and RoIAlign) and the targets in the forms the heads use.
pub struct AuxStep<'a> {
    /// The model (its decoder runs the positive queries).
    pub model: &'a CoDetr,
    pub cfg: &'a FitConfig,
    /// The adapter pyramid, `[B, d, h, w]` per level, with its `[h, w]` and strides.
    pub maps: Vec<Tensor<4>>,
    pub shapes: Vec<[usize; 2]>,
    pub strides: Vec<usize>,
    /// `[B, S, d]` encoder memory and its levels' `[h, w]`.
    pub memory: Tensor<3>,
    pub enc_shapes: &'a [[usize; 2]],
    pub targets: &'a [Target],
    /// Input side in pixels (the square canvas).
    pub size: f32,
    /// Per image, its `[h, w]` pixels in the canvas (the whole square under stretch).
    pub valid: Vec<[f32; 2]>,
    /// The padding of a letterboxed batch (the positive queries' decoder pass masks it as the
    /// main one does); `None` when every image fills the canvas.
    pub padding: Option<Padding>,
    /// Per image: gt labels, normalised cxcywh boxes, and pixel xyxy boxes.
    pub labels: Vec<&'a [usize]>,
    pub gts_norm: Vec<&'a [[f32; 4]]>,
    pub gts_px: Vec<Vec<[f32; 4]>>,
    /// λ2 · L (the head losses sit inside the sum over the L decoder layers).
    pub aux_weight: f64,
}

/// Where a branch's positive queries come from: per image its candidate boxes (pixels) and
/// the (candidate, gt) positive pairs, and the candidates' features `[rows, d]`, image `i`'s
/// starting at row `offsets[i]`.
struct QuerySource<'c> {
    candidates: Vec<&'c [[f32; 4]]>,
    pairs: &'c [Vec<(usize, usize)>],
    feats: Tensor<2>,
    offsets: Vec<usize>,
}

impl AuxStep<'_> {
    /// Per image, its valid anchors of the pyramid at `per_location` anchors per location
    /// (`None`: the image fills the canvas, every anchor is valid).
    fn inside(&self, per_location: usize) -> Vec<Option<Vec<bool>>> {
        self.valid
            .iter()
            .map(|&v| {
                (v != [self.size, self.size])
                    .then(|| valid_anchor_flags(&self.shapes, &self.strides, per_location, v))
            })
            .collect()
    }

    /// One positive-query group through the shared decoder (its own pass: isolated from the
    /// matching and dn queries), supervised by its assignment on every layer, weighted λ1;
    /// added to `total` as one sum over the layers.
    fn add_positive_queries(
        &self,
        proj: &PositiveQueryProj,
        src: QuerySource,
        name: &str,
        total: &mut Tensor<1>,
        terms: &mut TermLog,
        rng: &mut Rng,
    ) {
        let co = &self.cfg.co;
        let group = build_group(
            &src.candidates,
            src.pairs,
            &self.labels,
            &self.gts_norm,
            &self.valid,
            co.max_positive_queries,
            rng,
        );
        let det = &self.model.detector;
        let layers = det.decoder.layers.len();
        let (boxes, feats) = group_inputs(&group, src.feats, &src.offsets);
        let content = proj.forward(boxes.clone(), co.query_features.then_some(feats));
        let dec = det.decoder.forward(
            content,
            boxes,
            self.memory.clone(),
            self.enc_shapes,
            None,
            &det.box_heads[..layers],
            self.padding.as_ref(),
        );
        let (pl, pb) = det.decode_layers(dec);
        let mut sum: Option<Tensor<1>> = None;
        for (l, (lg, bx)) in pl.into_iter().zip(pb).enumerate() {
            let t = assigned_loss(lg, bx, &group.positives);
            terms.set_terms(&format!("{name}.{}", layer_prefix(l, layers)), &t);
            let v = t.weighted(&self.cfg.loss) * co.lambda1;
            sum = Some(match sum {
                Some(acc) => acc + v,
                None => v,
            });
        }
        terms.host(format!("{name}.queries"), group.positives.len() as f32);
        terms.host(format!("{name}.uncapped"), group.uncapped_positives as f32);
        if let Some(sum) = sum {
            *total = total.clone() + sum;
        }
    }
}

/// The official log naming of decoder layer `l` of `layers`: the last unprefixed, the others
/// `d0.`, `d1.`, …
pub fn layer_prefix(l: usize, layers: usize) -> String {
    if l + 1 == layers {
        String::new()
    } else {
        format!("d{l}.")
    }
}

/// One auxiliary branch of Co-DETR.
pub trait AuxBranch {
    /// Its name in the log (`t_{name}`: seconds since the step began when it finished).
    fn name(&self) -> &'static str;
    /// Adds the branch's head loss (if `[co] aux_loss`) and its positive queries' loss (if
    /// `[co] positive_queries`) to `total`, logging each term.
    fn add_loss(
        &self,
        step: &AuxStep,
        total: &mut Tensor<1>,
        terms: &mut TermLog,
        rng: &mut Rng,
    ) -> Result<()>;
}

/// Branch 1 (K ≥ 1): ATSS on the pyramid; its positive anchors are the queries' boxes and
/// the pyramid tokens at them their features.
pub struct AtssBranch<'m> {
    pub head: &'m AtssHead,
    pub queries: &'m PositiveQueryProj,
}

impl AuxBranch for AtssBranch<'_> {
    fn name(&self) -> &'static str {
        "atss"
    }

    fn add_loss(
        &self,
        step: &AuxStep,
        total: &mut Tensor<1>,
        terms: &mut TermLog,
        rng: &mut Rng,
    ) -> Result<()> {
        let co = &step.cfg.co;
        let (anchors, per_level) = pyramid_anchors(&step.shapes, &step.strides, &co.atss);
        let inside = step.inside(1);
        let pos = assign(&anchors, &per_level, &step.gts_px, &inside, &co.atss);
        if co.aux_loss {
            let o = self.head.forward(&step.maps);
            let l = atss_loss(&o, &anchors, &pos, step.targets, &step.gts_px, &inside);
            let a = &co.atss;
            *total = total.clone()
                + (l.cls.clone() * a.cls_weight
                    + l.bbox.clone() * a.bbox_weight
                    + l.centerness.clone() * a.centerness_weight)
                    * step.aux_weight;
            terms.tensor("atss.loss_cls", l.cls);
            terms.tensor("atss.loss_bbox", l.bbox);
            terms.tensor("atss.loss_centerness", l.centerness);
        }
        if co.positive_queries {
            // every pyramid location is a token: [B, A, d]
            let tokens = Tensor::cat(
                step.maps
                    .iter()
                    .map(|m| {
                        let [b, d, h, w] = m.dims();
                        m.clone().reshape([b, d, h * w]).swap_dims(1, 2)
                    })
                    .collect(),
                1,
            );
            let [b, a, d] = tokens.dims();
            let src = QuerySource {
                candidates: vec![anchors.as_slice(); b],
                pairs: &pos.pairs,
                feats: tokens.reshape([b * a, d]),
                offsets: (0..b).map(|i| i * a).collect(),
            };
            step.add_positive_queries(self.queries, src, "pos0", total, terms, rng);
        }
        Ok(())
    }
}

/// Branch 2 (K = 2): Faster-RCNN, the RPN on the pyramid and the RoI head on the encoder
/// levels; its sampled RoIs are the queries' boxes and their pooled features the features.
pub struct RcnnBranch<'m> {
    pub rpn: &'m RpnHead,
    pub roi: &'m RoiHead,
    pub queries: &'m PositiveQueryProj,
}

impl AuxBranch for RcnnBranch<'_> {
    fn name(&self) -> &'static str {
        "rcnn"
    }

    fn add_loss(
        &self,
        step: &AuxStep,
        total: &mut Tensor<1>,
        terms: &mut TermLog,
        rng: &mut Rng,
    ) -> Result<()> {
        let co = &step.cfg.co;
        let ro = self.rpn.forward(&step.maps);
        let (anchors, levels) = pyramid_rpn_anchors(&step.shapes, &step.strides, &co.rpn);
        let props = proposals(&ro, &anchors, &levels, &step.valid, &co.rpn)?;
        let samples = sample_rois(&props, &step.gts_px, &co.roi, rng);
        let enc_strides = step.model.detector.config().level_strides();
        let feats = roi_features(
            step.memory.clone(),
            step.enc_shapes,
            &enc_strides,
            &samples,
            &co.roi,
        )?;
        if co.aux_loss {
            let inside = step.inside(self.rpn.num_anchors);
            let rl = rpn_loss(&ro, &anchors, &step.gts_px, &inside, &co.rpn, rng);
            let ol = roi_loss(
                self.roi,
                feats.clone(),
                &samples,
                &step.labels,
                &step.gts_px,
            );
            let (rc, oc) = (&co.rpn, &co.roi);
            *total = total.clone()
                + (rl.cls.clone() * rc.cls_weight
                    + rl.bbox.clone() * rc.bbox_weight
                    + ol.cls.clone() * oc.cls_weight
                    + ol.bbox.clone() * oc.bbox_weight)
                    * step.aux_weight;
            terms.tensor("rpn.loss_cls", rl.cls);
            terms.tensor("rpn.loss_bbox", rl.bbox);
            terms.tensor("roi.loss_cls", ol.cls);
            terms.tensor("roi.loss_iou", ol.bbox);
        }
        if co.positive_queries {
            // pooled RoI features (the official mean over the 7×7 bins): [R, d]
            let pooled = feats.mean_dim(1);
            let [r, _, d] = pooled.dims();
            let pooled = pooled.reshape([r, d]);
            let pairs: Vec<Vec<(usize, usize)>> = samples
                .gt
                .iter()
                .map(|g| {
                    g.iter()
                        .enumerate()
                        .filter_map(|(k, a)| a.map(|gi| (k, gi)))
                        .collect()
                })
                .collect();
            let mut offsets = Vec::with_capacity(samples.boxes.len());
            let mut at = 0;
            for v in &samples.boxes {
                offsets.push(at);
                at += v.len();
            }
            let src = QuerySource {
                candidates: samples.boxes.iter().map(|v| v.as_slice()).collect(),
                pairs: &pairs,
                feats: pooled,
                offsets,
            };
            step.add_positive_queries(self.queries, src, "pos1", total, terms, rng);
        }
        Ok(())
    }
}
