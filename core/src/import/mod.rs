//! Official Co-DINO checkpoints in: the `.pth` files of Sense-X/Co-DETR and of mmdetection 3.x
//! `projects/CO-DETR`, loaded into our [`Detector`] without Python and without running the
//! pickle ([`pth`]), every key accounted for ([`co_dino`]).
//!
//! The rule is all or nothing: every tensor of the file must have a home (a tensor of the
//! detector, a training-only head, or a BatchNorm counter), every tensor of the detector must
//! be filled, and every shape must fit; otherwise [`Error::Import`] lists what is wrong and no
//! model comes back.

pub mod co_dino;
pub mod pth;

use std::collections::BTreeMap;
use std::path::Path;

use burn::store::bridge::deferred;
use burn::store::{ApplyError, ModuleSnapshot, PyTorchToBurnAdapter};
use burn::tensor::{DType, Device, TensorData};

use crate::error::{Error, Result};
use crate::model::backbone::BackboneConfig;
use crate::model::{Detector, DetectorConfig};
use co_dino::Target;
use pth::StateDict;

/// What an import consumed, per part, for the report and the closing figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    /// Tensors in the checkpoint's state dict.
    pub tensors: usize,
    /// Official tensors loaded into the detector (the packed q/k/v counts once).
    pub detector_tensors: usize,
    /// Parameters of the detector per top-level module (`backbone`, `neck`, `encoder`, …),
    /// counted as PyTorch does: without BatchNorm statistics.
    pub detector_params: BTreeMap<String, usize>,
    /// BatchNorm running means and variances loaded (buffers in PyTorch).
    pub bn_statistics: usize,
    /// Training-only parts of the file (auxiliary heads, …): group → (tensors, parameters).
    pub training_only: BTreeMap<String, (usize, usize)>,
    /// BatchNorm `num_batches_tracked` counters (no weight in them).
    pub counters: usize,
    /// Swin `relative_position_index` buffers: computed by our model, checked equal.
    pub checked_buffers: usize,
    /// How the state dict sat in the file.
    pub layout: pth::Layout,
    /// Things the caller should tell the user (e.g. class names the file does not give).
    pub notes: Vec<String>,
}

impl ImportReport {
    /// The coverage as the CLIs print it: what every tensor of the file became.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{} tensors: {} into the detector ({} parameters + {} BatchNorm statistics), {} \
             BatchNorm counters, {} index buffers checked, {} training-only (not part of the detector)",
            self.tensors,
            self.detector_tensors,
            self.detector_param_count(),
            self.bn_statistics,
            self.counters,
            self.checked_buffers,
            self.training_only.values().map(|(t, _)| t).sum::<usize>(),
        )];
        for (module, n) in &self.detector_params {
            lines.push(format!("  detector {module:<10} {n:>11} parameters"));
        }
        for (group, (t, n)) in &self.training_only {
            lines.push(format!("  training {group}: {t} tensors, {n} parameters"));
        }
        lines.extend(self.notes.iter().map(|n| format!("  note: {n}")));
        lines
    }

    /// Sum of [`detector_params`](Self::detector_params).
    pub fn detector_param_count(&self) -> usize {
        self.detector_params.values().sum()
    }
}

/// An imported official checkpoint.
pub struct Imported {
    pub model: Detector,
    /// The config the model was built with: the caller's, with the class count (and the
    /// neck's conv bias) read from the file.
    pub config: DetectorConfig,
    /// From the checkpoint's `meta`; `class_<i>` when it names none.
    pub class_names: Vec<String>,
    /// SHA-256 of the `.pth` file.
    pub sha256: String,
    pub report: ImportReport,
    /// The training-only tensors of the file (auxiliary heads, denoising embedding,
    /// positive-query projections) by official key, unread: the trainer maps them onto its
    /// training heads; inference has no use for them.
    pub training: BTreeMap<String, pth::PtTensor>,
}

/// A tensor that could not be read, in the form burn's deferred tensors report.
fn pack_error(message: String) -> burn_pack::Error {
    burn_pack::Error::ValidationError(message)
}

/// One tensor that did not fit, as the import errors list it.
pub fn apply_error(e: &ApplyError) -> String {
    match e {
        ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        } => format!(
            "{path}: the checkpoint's shape {:?} does not fit the config's {:?}",
            found.as_slice(),
            expected.as_slice()
        ),
        other => other.to_string(),
    }
}

/// Lists at most `n` items and says how many more there are.
pub fn listing(items: &[String], n: usize) -> String {
    let mut s = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        s.push_str(&format!(", … ({} more)", items.len() - n));
    }
    s
}

fn shape_of(sd: &StateDict, key: &str) -> Option<Vec<usize>> {
    sd.tensors.get(key).map(|t| t.shape().to_vec())
}

/// Reorders rows of `4C` values from Sense-X's patch-merge layout (block-major, blocks
/// (0,0), (1,0), (0,1), (1,1)) to ours (channel-major, (0,0), (0,1), (1,0), (1,1)): block
/// order `[0, 2, 1, 3]`, which is its own inverse.
fn merge_order_from_sensex(v: &[f32], c4: usize) -> Vec<f32> {
    const BLOCK: [usize; 4] = [0, 2, 1, 3];
    let c = c4 / 4;
    let mut out = vec![0.0; v.len()];
    for (src, dst) in v.chunks_exact(c4).zip(out.chunks_exact_mut(c4)) {
        for ch in 0..c {
            for (k, &b) in BLOCK.iter().enumerate() {
                dst[ch * 4 + k] = src[b * c + ch];
            }
        }
    }
    out
}

/// A Swin `relative_position_index` must be the standard one for its window (the model
/// computes it; a different one would be a different network).
fn check_relative_index(
    t: &burn::store::pytorch_reader::Tensor,
) -> std::result::Result<(), String> {
    let shape = t.shape().to_vec();
    let n = match shape.as_slice() {
        [a, b] if a == b => *a,
        _ => return Err(format!("shape {shape:?} is not [w², w²]")),
    };
    let w = (n as f64).sqrt().round() as usize;
    if w * w != n {
        return Err(format!("{n} is not a square window"));
    }
    let got = pth::read_i64(t)?;
    if got != crate::model::swin::relative_position_index(w) {
        return Err(format!(
            "not the standard relative position index of a {w}×{w} window"
        ));
    }
    Ok(())
}

/// Whether the state dict's backbone is a Swin Transformer (`backbone.patch_embed.*`).
fn has_swin_backbone(sd: &StateDict) -> bool {
    sd.tensors
        .keys()
        .any(|k| k.starts_with("backbone.patch_embed."))
}

/// The official preset matching a checkpoint's backbone, for when the user names no model
/// config: `paper-swin-l` for a Swin backbone, else `paper-r50`. No tensor is read.
pub fn official_preset(sd: &StateDict) -> DetectorConfig {
    if has_swin_backbone(sd) {
        DetectorConfig::paper_swin_l()
    } else {
        DetectorConfig::paper_r50()
    }
}

/// Loads an official Co-DINO checkpoint into a detector of `base`'s architecture
/// ([`import_state_dict`] of the opened file).
pub fn import_co_dino(path: &Path, base: &DetectorConfig, device: &Device) -> Result<Imported> {
    import_state_dict(StateDict::open(path)?, base, device)
}

/// Loads an opened official state dict into a detector of `base`'s architecture (open the file
/// once, e.g. to pick `base` with [`official_preset`] first).
///
/// The class count comes from the file (`cls_branches.0`), as does whether the neck's convs
/// carry a bias (the official ChannelMapper's do not); everything else is `base`'s, and a
/// tensor that does not fit it is an error naming it.
pub fn import_state_dict(
    sd: StateDict,
    base: &DetectorConfig,
    device: &Device,
) -> Result<Imported> {
    let path = sd.path.clone();
    let fail = |problems: Vec<String>| Error::Import {
        path: path.clone(),
        problems: problems.join("\n  "),
    };

    let mut config = base.clone();
    match shape_of(&sd, "query_head.cls_branches.0.weight").as_deref() {
        Some([classes, _]) => config.num_classes = *classes,
        _ => {
            return Err(fail(vec![
                "no `query_head.cls_branches.0.weight`: not a Co-DINO / Co-DETR checkpoint".into(),
            ]));
        }
    }
    config.neck.conv_bias = sd.tensors.contains_key("neck.convs.0.conv.bias");
    let file_swin = has_swin_backbone(&sd);
    let config_swin = matches!(config.backbone, BackboneConfig::Swin(_));
    if file_swin != config_swin {
        let (file, cfg, preset) = if file_swin {
            ("a Swin Transformer", "a ResNet", "paper-swin-l")
        } else {
            ("a ResNet", "a Swin Transformer", "paper-r50")
        };
        return Err(fail(vec![format!(
            "the checkpoint's backbone is {file} but the model config's is {cfg}: start from \
             the {preset} preset (or a model config with that backbone)"
        )]));
    }
    config.validate()?;

    let mut report = ImportReport {
        tensors: sd.tensors.len(),
        layout: sd.layout.clone(),
        ..Default::default()
    };
    let mut unknown = Vec::new();
    let mut misfit = Vec::new();
    let mut tensors = Vec::new();
    let mut training = BTreeMap::new();
    for (key, t) in &sd.tensors {
        let Some(target) = co_dino::map_key(key) else {
            unknown.push(key.clone());
            continue;
        };
        let reorder = matches!(target, Target::DetectorMergeOrder(_));
        match target {
            Target::Counter => report.counters += 1,
            Target::RelativeIndex => {
                report.checked_buffers += 1;
                if let Err(e) = check_relative_index(t) {
                    misfit.push(format!("{key}: {e}"));
                }
            }
            Target::Training(group) => {
                let e = report.training_only.entry(group.to_string()).or_default();
                e.0 += 1;
                e.1 += t.num_elements();
                training.insert(key.clone(), t.clone());
            }
            Target::Detector(ours) | Target::DetectorMergeOrder(ours) => {
                report.detector_tensors += 1;
                let t = t.clone();
                tensors.push(deferred(
                    ours,
                    DType::F32,
                    t.shape().into(),
                    None,
                    move || {
                        let data = pth::read_f32(&t).map_err(pack_error)?;
                        if !reorder {
                            return Ok(data);
                        }
                        let shape = data.shape().to_vec();
                        let v: Vec<f32> = data
                            .try_to_vec()
                            .map_err(|e| pack_error(format!("{e:?}")))?;
                        let c4 = *shape.last().unwrap_or(&0);
                        if c4 % 4 != 0 {
                            return Err(pack_error(format!(
                                "`{}`: last axis {c4} is not 4 × channels",
                                t.name
                            )));
                        }
                        Ok(TensorData::new(merge_order_from_sensex(&v, c4), shape))
                    },
                ));
            }
            Target::DetectorPacked(ours) => {
                report.detector_tensors += 1;
                let shape = t.shape().to_vec();
                if shape.first().is_none_or(|rows| rows % 3 != 0) {
                    misfit.push(format!("{key} {shape:?}: rows not divisible into q, k, v"));
                    continue;
                }
                let mut part_shape = shape.clone();
                part_shape[0] /= 3;
                let per_part: usize = part_shape.iter().product();
                for (i, path) in ours.into_iter().enumerate() {
                    let t = t.clone();
                    let ps = part_shape.clone();
                    tensors.push(deferred(
                        path,
                        DType::F32,
                        ps.clone().into(),
                        None,
                        move || {
                            let all = pth::read_f32(&t).map_err(pack_error)?;
                            let v: Vec<f32> =
                                all.try_to_vec().map_err(|e| pack_error(format!("{e:?}")))?;
                            let rows = v[i * per_part..(i + 1) * per_part].to_vec();
                            Ok(TensorData::new(rows, ps.clone()))
                        },
                    ));
                }
            }
        }
    }

    let mut model = config.init(device)?;
    let result = model.apply(tensors, None, Some(Box::new(PyTorchToBurnAdapter)), false);
    let mut problems = Vec::new();
    if !unknown.is_empty() {
        problems.push(format!(
            "{} tensors belong to no Co-DINO part: {}",
            unknown.len(),
            listing(&unknown, 12)
        ));
    }
    for e in &result.errors {
        misfit.push(apply_error(e));
    }
    if !misfit.is_empty() {
        problems.push(format!(
            "{} tensors do not fit (the model config differs from the checkpoint's architecture: \
             give its dimensions in a model config): {}",
            misfit.len(),
            listing(&misfit, 12)
        ));
    }
    if !result.unused.is_empty() {
        problems.push(format!(
            "{} tensors have no place in a detector of this config (more layers or levels \
             than it has?): {}",
            result.unused.len(),
            listing(&result.unused, 12)
        ));
    }
    if !result.missing.is_empty() {
        let miss: Vec<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
        problems.push(format!(
            "{} tensors of the detector are not in the checkpoint: {}",
            miss.len(),
            listing(&miss, 12)
        ));
    }
    if !problems.is_empty() {
        return Err(fail(problems));
    }
    if let Some(p) = crate::model::params::first_non_finite(&model) {
        return Err(fail(vec![format!("`{p}` contains NaN or infinity")]));
    }
    for snap in model.collect(None, None, false) {
        // PyTorch's convention: BatchNorm statistics are buffers, not parameters.
        if snap.name.ends_with("running_mean") || snap.name.ends_with("running_var") {
            report.bn_statistics += snap.shape.num_elements();
            continue;
        }
        let top = snap.name.split('.').next().unwrap_or_default().to_string();
        *report.detector_params.entry(top).or_default() += snap.shape.num_elements();
    }
    let class_names = if sd.class_names.len() == config.num_classes {
        sd.class_names.clone()
    } else {
        report.notes.push(if sd.class_names.is_empty() {
            "the checkpoint's meta names no classes: they are class_<i>".to_string()
        } else {
            format!(
                "the checkpoint's meta names {} classes but its class head has {}: they are \
                 class_<i>",
                sd.class_names.len(),
                config.num_classes
            )
        });
        (0..config.num_classes)
            .map(|i| format!("class_{i}"))
            .collect()
    };
    Ok(Imported {
        model,
        config,
        class_names,
        sha256: sd.sha256.clone(),
        report,
        training,
    })
}
