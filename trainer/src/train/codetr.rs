//! The training-time Co-DETR: the inference `Detector` plus the parameters only training uses
//! (the denoising label embedding, the multi-scale adapter, the ATSS and Faster-RCNN auxiliary
//! heads and their positive-query projections), and the loss of one batch (paper eq. 6).

use burn::module::{Module, Param};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::config::FitConfig;
use super::terms::TermLog;
use crate::auxiliary::adapter::MultiScaleAdapter;
use crate::auxiliary::atss_head::gt_pixels;
use crate::auxiliary::atss_head::{AtssHead, assign, atss_loss, pyramid_anchors};
use crate::auxiliary::positive_queries::{
    PositiveQueryProj, QueryGroup, build_group, group_inputs,
};
use crate::auxiliary::roi_head::{RoiHead, roi_features, roi_loss, sample_rois};
use crate::auxiliary::rpn_head::{RpnHead, proposals, pyramid_rpn_anchors, rpn_loss};
use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::loss::criterion::{Terms, assigned_loss, matched_loss};
use crate::loss::matcher::MatchCosts;
use crate::model::denoising::{self, DnQueries, attention_mask};
use crate::model::detector::pixels_to_tensor;
use crate::model::{Detector, DetectorConfig};
use crate::rng::Rng;

/// Parameters used only in training (dropped by the exporter).
#[derive(Module, Debug)]
pub struct TrainHeads {
    /// `[C, d]` content embedding of the (noised) class of each denoising query.
    pub label_embed: Param<Tensor<2>>,
    /// K ≥ 1: the aux heads' pyramid from the encoder memory.
    pub adapter: Option<MultiScaleAdapter>,
    /// K ≥ 1: the ATSS head and the projections of its positive queries.
    pub atss: Option<AtssHead>,
    pub atss_queries: Option<PositiveQueryProj>,
    /// K = 2: the RPN, the RoI head and the projections of its positive queries.
    pub rpn: Option<RpnHead>,
    pub roi: Option<RoiHead>,
    pub rcnn_queries: Option<PositiveQueryProj>,
}

impl TrainHeads {
    /// `k`: number of auxiliary heads (0 = plain DINO); `co` sizes the Faster-RCNN branch.
    pub fn new(
        cfg: &DetectorConfig,
        k: usize,
        co: &super::config::CoConfig,
        device: &Device,
    ) -> Result<Self> {
        let d = cfg.transformer.d_model;
        let levels = cfg.num_levels() + 1;
        Ok(Self {
            label_embed: Param::from_tensor(Tensor::random(
                [cfg.num_classes, d],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                device,
            )),
            adapter: if k >= 1 {
                Some(MultiScaleAdapter::new(d, device)?)
            } else {
                None
            },
            atss: (k >= 1).then(|| AtssHead::new(d, cfg.num_classes, levels, device)),
            atss_queries: (k >= 1).then(|| PositiveQueryProj::new(d, device)),
            rpn: (k >= 2).then(|| RpnHead::new(d, &co.rpn, device)),
            roi: (k >= 2).then(|| RoiHead::new(d, cfg.num_classes, &co.roi, device)),
            rcnn_queries: (k >= 2).then(|| PositiveQueryProj::new(d, device)),
        })
    }
}

#[derive(Module, Debug)]
pub struct CoDetr {
    pub detector: Detector,
    pub heads: TrainHeads,
}

/// One batch's loss: the weighted total and every named term (unweighted) for the log.
pub struct StepLoss {
    pub total: Tensor<1>,
    /// `total` read back (with the terms, in one read).
    pub value: f32,
    /// The auxiliary part alone (aux-head losses + positive-query losses), when K ≥ 1: lets
    /// tests check where the one-to-many supervision sends gradient.
    pub aux: Option<Tensor<1>>,
    pub terms: Vec<(String, f32)>,
}

fn memory_zero(det: &Detector) -> Tensor<1> {
    Tensor::zeros([1], &det.level_embed.val().device())
}

impl CoDetr {
    pub fn new(
        cfg: &DetectorConfig,
        k: usize,
        co: &super::config::CoConfig,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            detector: cfg.init(device)?,
            heads: TrainHeads::new(cfg, k, co, device)?,
        })
    }

    /// One positive-query group through the shared decoder (its own pass: isolated from the
    /// matching and dn queries), supervised by its assignment on every layer, weighted λ1.
    #[allow(clippy::too_many_arguments)]
    fn positive_query_loss(
        &self,
        proj: &PositiveQueryProj,
        group: &QueryGroup,
        feats: Tensor<2>,
        offsets: &[usize],
        memory: Tensor<3>,
        shapes: &[[usize; 2]],
        name: &str,
        co: &crate::train::config::CoConfig,
        w: &crate::loss::criterion::LossWeights,
        terms: &mut TermLog,
    ) -> Tensor<1> {
        let layers = self.detector.decoder.layers.len();
        let (boxes, feats) = group_inputs(group, feats, offsets);
        let content = proj.forward(boxes.clone(), co.query_features.then_some(feats));
        let dec = self.detector.decoder.forward(
            content,
            boxes,
            memory,
            shapes,
            None,
            &self.detector.box_heads[..layers],
        );
        let (pl, pb) = self.detector.decode_layers(dec);
        let mut total: Option<Tensor<1>> = None;
        for (l, (lg, bx)) in pl.into_iter().zip(pb).enumerate() {
            let prefix = if l + 1 == layers {
                String::new()
            } else {
                format!("d{l}.")
            };
            let t = assigned_loss(lg, bx, &group.positives);
            terms.set_terms(&format!("{name}.{prefix}"), &t);
            let v = t.weighted(w) * co.lambda1;
            total = Some(match total {
                Some(acc) => acc + v,
                None => v,
            });
        }
        terms.host(format!("{name}.queries"), group.positives.len() as f32);
        terms.host(format!("{name}.uncapped"), group.uncapped_positives as f32);
        total.unwrap_or_else(|| memory_zero(&self.detector))
    }

    /// Content `[B, pad, d]` and references `[B, pad, 4]` of the dn queries.
    fn dn_inputs(&self, dn: &DnQueries, device: &Device) -> (Tensor<3>, Tensor<3>) {
        let b = dn.labels.len();
        let pad = dn.pad_size();
        let d = self.heads.label_embed.dims()[1];
        let idx: Vec<i64> = dn
            .labels
            .iter()
            .flatten()
            .map(|l| l.unwrap_or(0) as i64)
            .collect();
        let used: Vec<f32> = dn
            .labels
            .iter()
            .flatten()
            .map(|l| if l.is_some() { 1.0 } else { 0.0 })
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [b * pad]), device);
        let used = Tensor::<2>::from_data(TensorData::new(used, [b * pad, 1]), device);
        let content = (self.heads.label_embed.val().select(0, idx) * used).reshape([b, pad, d]);
        let boxes: Vec<f32> = dn.boxes.iter().flatten().flatten().copied().collect();
        let reference = Tensor::<3>::from_data(TensorData::new(boxes, [b, pad, 4]), device);
        (content, reference)
    }

    /// The loss of `batch`. `rng` draws the denoising noise.
    pub fn loss(&self, batch: &Batch, cfg: &FitConfig, rng: &mut Rng) -> Result<StepLoss> {
        let t_start = std::time::Instant::now();
        let det_cfg = self.detector.config();
        let device = self.detector.level_embed.val().device();
        let s = batch.size as usize;
        let images = pixels_to_tensor(&batch.pixels, batch.len(), s, s, &device)?;
        let targets = &batch.targets;
        let dn = denoising::generate(targets, det_cfg.num_classes, &cfg.dn, rng);
        let pad = dn.as_ref().map_or(0, |d| d.pad_size());
        let q = det_cfg.transformer.num_queries;
        let out = self.detector.forward_with(images, |memory, shapes, sel| {
            let Some(dn) = &dn else {
                return (
                    sel.content.clone(),
                    sel.reference.clone(),
                    None,
                    memory,
                    shapes,
                );
            };
            let (c, r) = self.dn_inputs(dn, &device);
            let (n, mask) = attention_mask(Some((dn.num_groups, dn.group_size)), q, &[]);
            let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [n, n]), &device);
            (
                Tensor::cat(vec![c, sel.content.clone()], 1),
                Tensor::cat(vec![r, sel.reference.clone()], 1),
                Some(mask),
                memory,
                shapes,
            )
        })?;
        let costs = MatchCosts::default();
        let w = &cfg.loss;
        let mut total = Tensor::<1>::zeros([1], &device);
        let mut terms = TermLog::new();
        let record =
            |terms: &mut TermLog, name: &str, t: &Terms, weight: f64, total: &mut Tensor<1>| {
                *total = total.clone() + t.weighted(w) * weight;
                terms.set_terms(name, t);
            };
        let layers = out.logits.len();
        for (l, (logits, boxes)) in out.logits.iter().zip(&out.boxes).enumerate() {
            // official naming: the last layer unprefixed, the others d0., d1., …
            let prefix = if l + 1 == layers {
                String::new()
            } else {
                format!("d{l}.")
            };
            let m = matched_loss(
                logits.clone().narrow(1, pad, q),
                boxes.clone().narrow(1, pad, q),
                targets,
                &costs,
            )?;
            record(&mut terms, &prefix, &m, 1.0, &mut total);
            if let Some(dn) = &dn {
                let t = assigned_loss(
                    logits.clone().narrow(1, 0, pad),
                    boxes.clone().narrow(1, 0, pad),
                    &dn.positives,
                );
                record(&mut terms, &format!("{prefix}dn_"), &t, 1.0, &mut total);
            }
        }
        let enc = matched_loss(out.enc_logits, out.enc_boxes, targets, &costs)?;
        record(&mut terms, "enc_", &enc, cfg.enc_loss_weight, &mut total);

        // Co-DETR: the aux heads on the adapter pyramid and their positive queries.
        terms.host("t_main", t_start.elapsed().as_secs_f32());
        let main_total = total.clone();
        let mut aux = None;
        if let (Some(adapter), Some(atss), Some(proj)) = (
            &self.heads.adapter,
            &self.heads.atss,
            &self.heads.atss_queries,
        ) {
            let size = batch.size as f32;
            let b = batch.len();
            let d = det_cfg.transformer.d_model;
            let maps = adapter.forward(out.memory.clone(), &out.shapes);
            let shapes: Vec<[usize; 2]> = maps
                .iter()
                .map(|m| {
                    let [_, _, h, w] = m.dims();
                    [h, w]
                })
                .collect();
            let mut strides = det_cfg.level_strides();
            strides.push(strides.last().copied().unwrap_or(32) * 2);
            let labels: Vec<&[usize]> = targets.iter().map(|t| t.labels.as_slice()).collect();
            let gts_norm: Vec<&[[f32; 4]]> = targets.iter().map(|t| t.boxes.as_slice()).collect();
            let gts_px: Vec<Vec<[f32; 4]>> = targets.iter().map(|t| gt_pixels(t, size)).collect();
            let aux_weight = cfg.co.lambda2 * layers as f64;

            // ATSS (head 0)
            let (anchors, per_level) = pyramid_anchors(&shapes, &strides, &cfg.co.atss);
            let pos = assign(&anchors, &per_level, targets, size, &cfg.co.atss);
            if cfg.co.aux_loss {
                let o = atss.forward(&maps);
                let l = atss_loss(&o, &anchors, &pos, targets, size);
                let a = &cfg.co.atss;
                // Paper eq. 6: λ2·L_enc inside the sum over the L decoder layers.
                total = total
                    + (l.cls.clone() * a.cls_weight
                        + l.bbox.clone() * a.bbox_weight
                        + l.centerness.clone() * a.centerness_weight)
                        * aux_weight;
                terms.tensor("atss.loss_cls", l.cls);
                terms.tensor("atss.loss_bbox", l.bbox);
                terms.tensor("atss.loss_centerness", l.centerness);
            }
            if cfg.co.positive_queries {
                let tokens = Tensor::cat(
                    maps.iter()
                        .map(|m| {
                            let [b, _, h, w] = m.dims();
                            m.clone().reshape([b, d, h * w]).swap_dims(1, 2)
                        })
                        .collect(),
                    1,
                );
                let a = tokens.dims()[1];
                let cands: Vec<&[[f32; 4]]> = vec![anchors.as_slice(); b];
                let group = build_group(
                    &cands,
                    &pos.pairs,
                    &labels,
                    &gts_norm,
                    size,
                    cfg.co.max_positive_queries,
                    rng,
                );
                let offsets: Vec<usize> = (0..b).map(|i| i * a).collect();
                total = total
                    + self.positive_query_loss(
                        proj,
                        &group,
                        tokens.reshape([b * a, d]),
                        &offsets,
                        out.memory.clone(),
                        &out.shapes,
                        "pos0",
                        &cfg.co,
                        w,
                        &mut terms,
                    );
            }

            terms.host("t_atss", t_start.elapsed().as_secs_f32());
            // Faster-RCNN (head 1): RPN on the pyramid, RoI head on the encoder levels.
            if let (Some(rpn), Some(roi), Some(rproj)) =
                (&self.heads.rpn, &self.heads.roi, &self.heads.rcnn_queries)
            {
                let ro = rpn.forward(&maps);
                let (ranchors, rlevels) = pyramid_rpn_anchors(&shapes, &strides, &cfg.co.rpn);
                let props = proposals(&ro, &ranchors, &rlevels, size, &cfg.co.rpn)?;
                let samples = sample_rois(&props, &gts_px, &cfg.co.roi, rng);
                let enc_strides = det_cfg.level_strides();
                let feats = roi_features(
                    out.memory.clone(),
                    &out.shapes,
                    &enc_strides,
                    &samples,
                    &cfg.co.roi,
                )?;
                if cfg.co.aux_loss {
                    let rl = rpn_loss(&ro, &ranchors, &gts_px, &cfg.co.rpn, rng);
                    let ol = roi_loss(roi, feats.clone(), &samples, &labels, &gts_px);
                    let (rc, oc) = (&cfg.co.rpn, &cfg.co.roi);
                    total = total
                        + (rl.cls.clone() * rc.cls_weight
                            + rl.bbox.clone() * rc.bbox_weight
                            + ol.cls.clone() * oc.cls_weight
                            + ol.bbox.clone() * oc.bbox_weight)
                            * aux_weight;
                    terms.tensor("rpn.loss_cls", rl.cls);
                    terms.tensor("rpn.loss_bbox", rl.bbox);
                    terms.tensor("roi.loss_cls", ol.cls);
                    terms.tensor("roi.loss_iou", ol.bbox);
                }
                if cfg.co.positive_queries {
                    // pooled RoI features (the official mean over the 7×7 bins)
                    let pooled = feats.mean_dim(1);
                    let [r, _, _] = pooled.dims();
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
                    let cands: Vec<&[[f32; 4]]> =
                        samples.boxes.iter().map(|v| v.as_slice()).collect();
                    let mut offsets = Vec::with_capacity(b);
                    let mut at = 0;
                    for v in &samples.boxes {
                        offsets.push(at);
                        at += v.len();
                    }
                    let group = build_group(
                        &cands,
                        &pairs,
                        &labels,
                        &gts_norm,
                        size,
                        cfg.co.max_positive_queries,
                        rng,
                    );
                    total = total
                        + self.positive_query_loss(
                            rproj,
                            &group,
                            pooled,
                            &offsets,
                            out.memory.clone(),
                            &out.shapes,
                            "pos1",
                            &cfg.co,
                            w,
                            &mut terms,
                        );
                }
            }
            terms.host("t_rcnn", t_start.elapsed().as_secs_f32());
            let gt: usize = targets.iter().map(|t| t.labels.len()).sum();
            terms.host("num_gt", gt as f32);
            aux = Some(total.clone() - main_total);
        }
        let (value, terms) = terms.read(&total)?;
        if !value.is_finite() {
            return Err(Error::InvalidArgument {
                what: "training",
                message: format!(
                    "non-finite loss at batch {} of epoch {} (terms: {terms:?})",
                    batch.index, batch.epoch
                ),
            });
        }
        Ok(StepLoss {
            total,
            value,
            aux,
            terms,
        })
    }
}
