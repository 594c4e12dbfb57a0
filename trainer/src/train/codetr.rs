//! The training-time Co-DETR: the inference `Detector` plus the parameters only training uses
//! (the denoising label embedding, the multi-scale adapter, the ATSS and Faster-RCNN auxiliary
//! heads and their positive-query projections), and the loss of one batch (paper eq. 6).

use burn::module::{Module, Param};
use burn::store::{ModuleRecord, ModuleSnapshot, RecordError};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::branches::{AtssBranch, AuxBranch, AuxStep, RcnnBranch, layer_prefix};
use super::config::FitConfig;
use super::terms::TermLog;
use crate::auxiliary::adapter::MultiScaleAdapter;
use crate::auxiliary::atss_head::{AtssHead, gt_pixels};
use crate::auxiliary::positive_queries::PositiveQueryProj;
use crate::auxiliary::roi_head::RoiHead;
use crate::auxiliary::rpn_head::RpnHead;
use crate::error::{Error, Result};
use crate::loss::criterion::{Terms, assigned_loss, matched_loss};
use crate::loss::matcher::MatchCosts;
use crate::train::denoising::{self, DnQueries, attention_mask};
use codetr_core::model::detector::{DetectorOutput, pixels_to_tensor};
use codetr_core::model::init::{materialize, seeded_on_host};
use codetr_core::model::padding::Padding;
use codetr_core::model::{Detector, DetectorConfig};
use codetr_data::loader::{Batch, Target};
use codetr_data::rng::Rng;

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

    /// These heads with a saved record's weights. Heads saved before the adapter's conv had a
    /// bias (the official one has) lack exactly that tensor: they load with a zero bias, which
    /// is the network they were trained as. Anything else missing is the record's error.
    pub fn load_saved(self, record: ModuleRecord) -> std::result::Result<Self, RecordError> {
        let strict = self.clone().try_load_record(record.clone());
        let Err(e) = strict else { return strict };
        let Some(bias) = self
            .adapter
            .as_ref()
            .and_then(|a| a.downsample.conv.bias.clone())
        else {
            return Err(e);
        };
        if record.len() + 1 != self.collect(None, None, false).len() {
            return Err(e);
        }
        // Mark the bias, load what the record has, and check the mark is what stayed.
        let n = bias.dims()[0];
        let device = bias.device();
        let mut marked = self;
        if let Some(a) = marked.adapter.as_mut() {
            a.downsample.conv.bias = Some(Param::from_tensor(Tensor::full([n], f32::NAN, &device)));
        }
        let mut loaded = marked.try_load_record(record.allow_partial(true))?;
        let Some(a) = loaded.adapter.as_mut() else {
            return Err(e);
        };
        let untouched = a
            .downsample
            .conv
            .bias
            .as_ref()
            .is_some_and(|b| b.val().is_nan().all().into_scalar());
        if !untouched {
            return Err(e);
        }
        a.downsample.conv.bias = Some(Param::from_tensor(Tensor::zeros([n], &device)));
        Ok(loaded)
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

impl CoDetr {
    pub fn new(
        cfg: &DetectorConfig,
        k: usize,
        co: &super::config::CoConfig,
        device: &Device,
    ) -> Result<Self> {
        // Drawn in checkpoint order, the detector first: on a seeded device the detector's
        // weights are those `codetr-train init` writes for the same seed.
        Ok(Self {
            detector: materialize(cfg.init(device)?),
            heads: materialize(TrainHeads::new(cfg, k, co, device)?),
        })
    }

    /// The fresh model of a run: drawn on the host from `seed`, then moved to `device`, so a
    /// seed gives the same starting weights on every device (see `codetr_core::model::init`).
    pub fn seeded(
        cfg: &DetectorConfig,
        k: usize,
        co: &super::config::CoConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        seeded_on_host(seed, device, |host| Self::new(cfg, k, co, host))
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

    /// The auxiliary branches present (K of them), in the order their losses are added.
    pub fn branches(&self) -> Vec<Box<dyn AuxBranch + '_>> {
        let h = &self.heads;
        let mut out: Vec<Box<dyn AuxBranch + '_>> = Vec::new();
        if let (Some(head), Some(queries)) = (&h.atss, &h.atss_queries) {
            out.push(Box::new(AtssBranch { head, queries }));
        }
        if let (Some(rpn), Some(roi), Some(queries)) = (&h.rpn, &h.roi, &h.rcnn_queries) {
            out.push(Box::new(RcnnBranch { rpn, roi, queries }));
        }
        out
    }

    /// The loss of `batch` (paper eq. 6): the one-to-one branch (matching, denoising, encoder
    /// proposals), then each auxiliary branch. `rng` draws the denoising noise and the
    /// branches' samples.
    pub fn loss(&self, batch: &Batch, cfg: &FitConfig, rng: &mut Rng) -> Result<StepLoss> {
        let t_start = std::time::Instant::now();
        let det_cfg = self.detector.config();
        let device = self.detector.level_embed.val().device();
        let s = batch.size as usize;
        let images = pixels_to_tensor(&batch.pixels, batch.len(), s, s, &device)?;
        let targets = &batch.targets;
        let dn = denoising::generate(targets, det_cfg.num_classes, &cfg.dn, rng);
        // A letterboxed batch: the model masks each image's padding (DINO's img_masks).
        let padded = batch.padded();
        let out = self.detector.forward_padded_with(
            images,
            padded.as_deref(),
            |memory, shapes, sel| {
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
                let q = det_cfg.transformer.num_queries;
                let (n, mask) = attention_mask(Some((dn.num_groups, dn.group_size)), q, &[]);
                let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [n, n]), &device);
                (
                    Tensor::cat(vec![c, sel.content.clone()], 1),
                    Tensor::cat(vec![r, sel.reference.clone()], 1),
                    Some(mask),
                    memory,
                    shapes,
                )
            },
        )?;
        let mut terms = TermLog::new();
        let mut total = Tensor::<1>::zeros([1], &device);
        one_to_one_loss(&out, dn.as_ref(), targets, cfg, &mut total, &mut terms)?;
        terms.host("t_main", t_start.elapsed().as_secs_f32());

        // Co-DETR: the aux branches on the adapter pyramid and their positive queries.
        let mut aux = None;
        if let Some(adapter) = &self.heads.adapter {
            let main_total = total.clone();
            let maps = adapter.forward(out.memory.clone(), &out.shapes);
            let shapes = maps
                .iter()
                .map(|m| {
                    let [_, _, h, w] = m.dims();
                    [h, w]
                })
                .collect();
            let mut strides = det_cfg.level_strides();
            strides.push(strides.last().copied().unwrap_or(32) * 2);
            let size = batch.size as f32;
            let valid: Vec<[f32; 2]> = batch
                .valid
                .iter()
                .map(|&[h, w]| [h as f32, w as f32])
                .collect();
            let padding = match &padded {
                Some(v) => Some(Padding::new(v, [s, s], &out.shapes)?),
                None => None,
            };
            let step = AuxStep {
                model: self,
                cfg,
                maps,
                shapes,
                strides,
                memory: out.memory.clone(),
                enc_shapes: &out.shapes,
                targets,
                size,
                padding,
                labels: targets.iter().map(|t| t.labels.as_slice()).collect(),
                gts_norm: targets.iter().map(|t| t.boxes.as_slice()).collect(),
                gts_px: targets
                    .iter()
                    .zip(&valid)
                    .map(|(t, &v)| gt_pixels(t, v))
                    .collect(),
                valid,
                aux_weight: cfg.co.lambda2 * out.logits.len() as f64,
            };
            for branch in self.branches() {
                branch.add_loss(&step, &mut total, &mut terms, rng)?;
                let name = format!("t_{}", branch.name());
                terms.host(name, t_start.elapsed().as_secs_f32());
            }
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

/// The one-to-one (DINO) part of the loss, added to `total`: on every decoder layer the
/// Hungarian-matched queries and the denoising groups, then the encoder proposals.
fn one_to_one_loss(
    out: &DetectorOutput,
    dn: Option<&DnQueries>,
    targets: &[Target],
    cfg: &FitConfig,
    total: &mut Tensor<1>,
    terms: &mut TermLog,
) -> Result<()> {
    let costs = MatchCosts::default();
    let mut record = |name: &str, t: &Terms, weight: f64| {
        *total = total.clone() + t.weighted(&cfg.loss) * weight;
        terms.set_terms(name, t);
    };
    let pad = dn.map_or(0, DnQueries::pad_size);
    let layers = out.logits.len();
    for (l, (logits, boxes)) in out.logits.iter().zip(&out.boxes).enumerate() {
        let q = logits.dims()[1] - pad;
        let prefix = layer_prefix(l, layers);
        let m = matched_loss(
            logits.clone().narrow(1, pad, q),
            boxes.clone().narrow(1, pad, q),
            targets,
            &costs,
        )?;
        record(&prefix, &m, 1.0);
        if let Some(dn) = dn {
            let t = assigned_loss(
                logits.clone().narrow(1, 0, pad),
                boxes.clone().narrow(1, 0, pad),
                &dn.positives,
            );
            record(&format!("{prefix}dn_"), &t, 1.0);
        }
    }
    let enc = matched_loss(
        out.enc_logits.clone(),
        out.enc_boxes.clone(),
        targets,
        &costs,
    )?;
    record("enc_", &enc, cfg.enc_loss_weight);
    Ok(())
}
