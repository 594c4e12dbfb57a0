//! The training heads of an official Co-DINO checkpoint (Sense-X/Co-DETR, mmdetection 3.x
//! `projects/CO-DETR`) → our [`TrainHeads`], so a run can fine-tune from the published weights
//! with the auxiliary heads it was trained with. The detector itself comes from
//! [`codetr_core::import`], which hands over these tensors unread.
//!
//! Official → ours, checked against the official modules' outputs
//! (`tests/official_heads.rs`):
//! - `query_head.downsample.{0,1}` → `adapter.downsample.{conv,gn}` (the aux pyramid's extra
//!   level: a 3×3 stride-2 conv with bias + GN);
//! - `bbox_head.0` (CoATSSHead) → `atss`: `cls_convs.0` / `reg_convs.0` (ConvModule: conv
//!   without bias, GN) → `cls_conv`+`cls_gn` / `reg_conv`+`reg_gn`, whose conv biases are set to
//!   zero (ours has one; zero is the official network exactly); `atss_{cls,reg,centerness}` →
//!   `{cls,reg,ctr}_out`; the per-level `scales.N.scale` scalars → `scales[N]`;
//! - `rpn_head.rpn_{conv,cls,reg}` → `rpn.{conv,cls,reg}` (same anchor order: ratio-major,
//!   4 deltas inner);
//! - `roi_head.0.bbox_head` (Shared2FCBBoxHead) → `roi`: `shared_fcs.{0,1}` → `fc1`/`fc2`,
//!   `fc_cls`/`fc_reg` → `cls`/`reg` (background last, class-specific deltas, as ours).
//!   `fc1`'s input is reordered: the official RoI features are flattened channel-major
//!   (`c·pool² + p`), ours position-major (`p·d + c`);
//! - `query_head.transformer.aux_pos_trans{,_norm}.i` (and `pos_feats_{trans,norm}.i` where the
//!   file has them) → the positive-query projections of head `i`, in the official order: the
//!   RoI heads' first, then the ATSS heads' (`CoDETR.loss` collects them in that order);
//! - the denoising `label_embedding` → `label_embed`.
//!
//! Co-DINO has no feature term in its positive queries (`with_coord_feat=False`): the file has no
//! `pos_feats_*`, the run takes `query_features = false`, and our `feat_trans`/`feat_norm`
//! keep their fresh initialisation (unused).

use std::collections::BTreeMap;

use burn::module::Param;
use burn::store::bridge::deferred;
use burn::store::burn_pack::Error as PackError;
use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter};
use burn::tensor::{DType, Device, Tensor, TensorData};
use codetr_core::import::pth::{self, PtTensor};
use codetr_core::import::{apply_error, listing};
use codetr_core::model::DetectorConfig;

use crate::error::{Error, Result};
use crate::train::codetr::TrainHeads;
use crate::train::config::CoConfig;
use codetr_core::geometry::anchors::anchors_per_location;

/// What the heads' import consumed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HeadsReport {
    /// Official tensors loaded (the six ATSS scales count as one).
    pub tensors: usize,
    /// Parameters of our training heads filled from the file.
    pub params: usize,
    /// Our tensors not in the file, with the value they took and why.
    pub filled: Vec<String>,
}

/// Where an official training tensor goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeadTarget {
    /// Our training heads' tensor at this path.
    Tensor(String),
    /// `roi.fc1.weight`: the official columns (`c·pool² + p`) reordered to ours (`p·d + c`).
    RoiFc1(String),
    /// Element `n` of `atss.scales`.
    AtssScale(usize),
}

/// The official key's home in our heads; `rcnn_first`: the file has a RoI head, whose positive
/// queries are then head 0. `None`: no home (an unknown or unsupported part).
fn map_head_key(key: &str, rcnn_first: bool) -> Option<HeadTarget> {
    use HeadTarget::*;
    let t = |s: String| Some(Tensor(s));
    if key == "query_head.label_embedding.weight"
        || key == "query_head.dn_generator.label_embedding.weight"
    {
        return t("label_embed".into());
    }
    if let Some(rest) = key.strip_prefix("query_head.downsample.") {
        let (i, leaf) = rest.split_once('.')?;
        let part = match i {
            "0" => "conv",
            "1" => "gn",
            _ => return None,
        };
        return t(format!("adapter.downsample.{part}.{leaf}"));
    }
    if let Some(rest) = key.strip_prefix("bbox_head.0.") {
        if let Some(n) = rest
            .strip_prefix("scales.")
            .and_then(|r| r.strip_suffix(".scale"))
        {
            return Some(AtssScale(n.parse().ok()?));
        }
        for (theirs, ours) in [
            ("cls_convs.0.conv.", "cls_conv."),
            ("cls_convs.0.gn.", "cls_gn."),
            ("reg_convs.0.conv.", "reg_conv."),
            ("reg_convs.0.gn.", "reg_gn."),
            ("atss_cls.", "cls_out."),
            ("atss_reg.", "reg_out."),
            ("atss_centerness.", "ctr_out."),
        ] {
            if let Some(leaf) = rest.strip_prefix(theirs) {
                return t(format!("atss.{ours}{leaf}"));
            }
        }
        return None;
    }
    if let Some(rest) = key.strip_prefix("rpn_head.rpn_") {
        let (part, leaf) = rest.split_once('.')?;
        return matches!(part, "conv" | "cls" | "reg")
            .then(|| Tensor(format!("rpn.{part}.{leaf}")));
    }
    if let Some(rest) = key.strip_prefix("roi_head.0.bbox_head.") {
        let (part, leaf) = match rest.split_once('.')? {
            ("shared_fcs", r) => match r.split_once('.')? {
                ("0", leaf) => ("fc1", leaf),
                ("1", leaf) => ("fc2", leaf),
                _ => return None,
            },
            ("fc_cls", leaf) => ("cls", leaf),
            ("fc_reg", leaf) => ("reg", leaf),
            _ => return None,
        };
        let path = format!("roi.{part}.{leaf}");
        return Some(if path == "roi.fc1.weight" {
            RoiFc1(path)
        } else {
            Tensor(path)
        });
    }
    let rest = key.strip_prefix("query_head.transformer.")?;
    for (theirs, ours) in [
        ("aux_pos_trans_norm.", "pos_norm"),
        ("aux_pos_trans.", "pos_trans"),
        ("pos_feats_norm.", "feat_norm"),
        ("pos_feats_trans.", "feat_trans"),
    ] {
        if let Some(r) = rest.strip_prefix(theirs) {
            let (i, leaf) = r.split_once('.')?;
            let head = match (i, rcnn_first) {
                ("0", true) => "rcnn_queries",
                ("1", true) | ("0", false) => "atss_queries",
                _ => return None,
            };
            return t(format!("{head}.{ours}.{leaf}"));
        }
    }
    None
}

fn shape(training: &BTreeMap<String, PtTensor>, key: &str) -> Option<Vec<usize>> {
    training.get(key).map(|t| t.shape().to_vec())
}

fn import_error(message: String) -> Error {
    Error::InvalidArgument {
        what: "official training heads",
        message,
    }
}

/// The `[co]` settings of the heads in `training` (an official file's training-only tensors,
/// [`codetr_core::import::Imported::training`]), starting from `base`: K from the heads the file
/// has, the RoI head's FC width and pool size and `query_features` from their tensors. The
/// anchor settings are not in the file: `base`'s must give the RPN's anchor count (the official
/// ones, our defaults, do), else an error names them.
pub fn co_config_of(
    training: &BTreeMap<String, PtTensor>,
    base: &CoConfig,
    det: &DetectorConfig,
) -> Result<CoConfig> {
    let has = |p: &str| training.keys().any(|k| k.starts_with(p));
    for extra in ["roi_head.1.", "bbox_head.1."] {
        if has(extra) {
            return Err(import_error(format!(
                "the file has a second `{}` head; codetr trains at most one ATSS and one \
                 Faster-RCNN head",
                extra.trim_end_matches(".1.")
            )));
        }
    }
    let mut co = base.clone();
    co.k = match (has("bbox_head.0."), has("rpn_head.") && has("roi_head.0.")) {
        (true, true) => 2,
        (true, false) => 1,
        (false, false) => 0,
        (false, true) => {
            return Err(import_error(
                "the file has a Faster-RCNN head but no ATSS head: codetr's K = 1 is ATSS".into(),
            ));
        }
    };
    co.query_features = has("query_head.transformer.pos_feats_trans.");
    let d = det.transformer.d_model;
    if co.k == 2 {
        if let Some([a, _, _, _]) = shape(training, "rpn_head.rpn_cls.weight").as_deref() {
            let ours = anchors_per_location(co.rpn.scales_per_octave, co.rpn.ratios.len());
            if *a != ours {
                return Err(import_error(format!(
                    "the RPN has {a} anchors per location, [co.rpn] gives {ours} \
                     (scales_per_octave × ratios): set them to the file's"
                )));
            }
        }
        if let Some([fc, cols]) =
            shape(training, "roi_head.0.bbox_head.shared_fcs.0.weight").as_deref()
        {
            let pool = ((*cols / d.max(1)) as f64).sqrt().round() as usize;
            if pool * pool * d != *cols {
                return Err(import_error(format!(
                    "roi_head.0.bbox_head.shared_fcs.0 takes {cols} inputs: not pool² × {d}"
                )));
            }
            co.roi.fc_dim = *fc;
            co.roi.pool = pool;
        }
    }
    Ok(co)
}

/// Loads the official training heads into fresh [`TrainHeads`] of `det` and `co` (from
/// [`co_config_of`]). All or nothing, as the detector's import: a tensor with no home, a
/// misfit, or a head tensor the file lacks (beyond the ones filled by rule, listed in the
/// report) is an error that lists them.
pub fn load_official_heads(
    training: &BTreeMap<String, PtTensor>,
    det: &DetectorConfig,
    co: &CoConfig,
    device: &Device,
) -> Result<(TrainHeads, HeadsReport)> {
    let rcnn_first = co.k == 2;
    let mut report = HeadsReport::default();
    let mut unknown = Vec::new();
    let mut scales: BTreeMap<usize, PtTensor> = BTreeMap::new();
    let mut tensors = Vec::new();
    let d = det.transformer.d_model;
    for (key, t) in training {
        let Some(target) = map_head_key(key, rcnn_first) else {
            unknown.push(key.clone());
            continue;
        };
        report.params += t.shape().iter().product::<usize>();
        let path = match target {
            HeadTarget::AtssScale(n) => {
                scales.insert(n, t.clone());
                continue;
            }
            HeadTarget::Tensor(p) | HeadTarget::RoiFc1(p) => p,
        };
        report.tensors += 1;
        let reorder = path == "roi.fc1.weight";
        let t = t.clone();
        let shape = t.shape().to_vec();
        tensors.push(deferred(
            path,
            DType::F32,
            shape.clone().into(),
            None,
            move || {
                let data = pth::read_f32(&t).map_err(PackError::ValidationError)?;
                if !reorder {
                    return Ok(data);
                }
                let v: Vec<f32> = data
                    .try_to_vec()
                    .map_err(|e| PackError::ValidationError(format!("{e:?}")))?;
                Ok(TensorData::new(
                    fc1_from_channel_major(&v, shape[1], d),
                    shape.clone(),
                ))
            },
        ));
    }
    if !scales.is_empty() {
        // The official Scale modules, one scalar per level, are our one `[levels]` vector.
        let n = scales.len();
        if scales.keys().copied().ne(0..n) {
            return Err(import_error(format!(
                "bbox_head.0.scales are not numbered 0..{n}: {:?}",
                scales.keys().collect::<Vec<_>>()
            )));
        }
        report.tensors += 1;
        let parts: Vec<PtTensor> = scales.into_values().collect();
        tensors.push(deferred(
            "atss.scales".into(),
            DType::F32,
            [n].into(),
            None,
            move || {
                let mut v = Vec::with_capacity(parts.len());
                for p in &parts {
                    let data = pth::read_f32(p).map_err(PackError::ValidationError)?;
                    let x: Vec<f32> = data
                        .try_to_vec()
                        .map_err(|e| PackError::ValidationError(format!("{e:?}")))?;
                    match x.as_slice() {
                        [s] => v.push(*s),
                        _ => {
                            return Err(PackError::ValidationError(format!(
                                "an ATSS scale holds {} values, not 1",
                                x.len()
                            )));
                        }
                    }
                }
                Ok(TensorData::new(v, [parts.len()]))
            },
        ));
    }

    let mut heads = TrainHeads::new(det, co.k, co, device)?;
    let result = heads.apply(tensors, None, Some(Box::new(PyTorchToBurnAdapter)), false);
    let mut problems = Vec::new();
    if !unknown.is_empty() {
        problems.push(format!(
            "{} training tensors have no home in codetr's training heads: {}",
            unknown.len(),
            listing(&unknown, 12)
        ));
    }
    let misfit: Vec<String> = result.errors.iter().map(apply_error).collect();
    if !misfit.is_empty() {
        problems.push(format!(
            "{} tensors do not fit: {}",
            misfit.len(),
            listing(&misfit, 12)
        ));
    }
    if !result.unused.is_empty() {
        problems.push(format!(
            "{} tensors have no place in heads of K = {}: {}",
            result.unused.len(),
            co.k,
            listing(&result.unused, 12)
        ));
    }
    // Ours, not the file's: the ATSS towers' conv biases (the official ConvModule before GN has
    // none; zero is that network), and without `pos_feats_*` the unused feature projections.
    let by_rule = |p: &str| {
        matches!(p, "atss.cls_conv.bias" | "atss.reg_conv.bias")
            || (!co.query_features
                && (p.contains("_queries.feat_trans.") || p.contains("_queries.feat_norm.")))
    };
    let missing: Vec<String> = result
        .missing
        .iter()
        .map(|(p, _)| p.clone())
        .filter(|p| !by_rule(p))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} tensors of the training heads are not in the file: {}",
            missing.len(),
            listing(&missing, 12)
        ));
    }
    if !problems.is_empty() {
        return Err(import_error(problems.join("; ")));
    }
    if let Some(atss) = heads.atss.as_mut() {
        for conv in [&mut atss.cls_conv, &mut atss.reg_conv] {
            if let Some(b) = conv.bias.as_mut() {
                let n = b.dims()[0];
                *b = Param::from_tensor(Tensor::zeros([n], device));
            }
        }
        report
            .filled
            .push("atss.{cls,reg}_conv.bias = 0 (the official tower convs have no bias)".into());
    }
    if !co.query_features && co.k > 0 {
        report.filled.push(
            "*_queries.feat_{trans,norm}: fresh (Co-DINO's positive queries have no feature \
             term; query_features = false)"
                .into(),
        );
    }
    Ok((heads, report))
}

/// `roi.fc1.weight` in PyTorch's `[out, in]`: the official input index `c·pp + p` (RoI features
/// `[C, pool, pool]` flattened) → ours `p·d + c` (`[pool·pool, d]` flattened).
fn fc1_from_channel_major(v: &[f32], cols: usize, d: usize) -> Vec<f32> {
    let pp = cols / d.max(1);
    let rows = v.len() / cols.max(1);
    let mut out = vec![0.0; v.len()];
    for o in 0..rows {
        let src = &v[o * cols..(o + 1) * cols];
        let dst = &mut out[o * cols..(o + 1) * cols];
        for c in 0..d {
            for p in 0..pp {
                dst[p * d + c] = src[c * pp + p];
            }
        }
    }
    out
}

/// Unit checks of the mapping; the numerical check against the official modules is
/// `tests/official_heads.rs`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_both_layouts_map_once() {
        use HeadTarget::*;
        let t = |s: &str| Some(Tensor(s.into()));
        assert_eq!(
            map_head_key("query_head.dn_generator.label_embedding.weight", true),
            t("label_embed")
        );
        assert_eq!(
            map_head_key("query_head.label_embedding.weight", true),
            t("label_embed")
        );
        assert_eq!(
            map_head_key("query_head.downsample.1.weight", true),
            t("adapter.downsample.gn.weight")
        );
        assert_eq!(
            map_head_key("bbox_head.0.scales.5.scale", true),
            Some(AtssScale(5))
        );
        assert_eq!(
            map_head_key("bbox_head.0.cls_convs.0.gn.bias", true),
            t("atss.cls_gn.bias")
        );
        assert_eq!(
            map_head_key("rpn_head.rpn_reg.bias", true),
            t("rpn.reg.bias")
        );
        assert_eq!(
            map_head_key("roi_head.0.bbox_head.shared_fcs.0.weight", true),
            Some(RoiFc1("roi.fc1.weight".into()))
        );
        assert_eq!(
            map_head_key("roi_head.0.bbox_head.fc_reg.weight", true),
            t("roi.reg.weight")
        );
        // Head order: the RoI head's queries first when there is one.
        assert_eq!(
            map_head_key("query_head.transformer.aux_pos_trans.0.weight", true),
            t("rcnn_queries.pos_trans.weight")
        );
        assert_eq!(
            map_head_key("query_head.transformer.aux_pos_trans_norm.1.bias", true),
            t("atss_queries.pos_norm.bias")
        );
        assert_eq!(
            map_head_key("query_head.transformer.aux_pos_trans.0.weight", false),
            t("atss_queries.pos_trans.weight")
        );
        for none in [
            "query_head.transformer.head_pos_embed.weight",
            "query_head.transformer.aux_pos_trans.2.weight",
            "roi_head.0.bbox_head.shared_fcs.2.weight",
            "bbox_head.0.cls_convs.1.conv.weight",
            "rpn_head.rpn_extra.weight",
        ] {
            assert_eq!(map_head_key(none, true), None, "{none}");
        }
    }

    #[test]
    fn fc1_reorder_matches_the_two_flatten_orders() {
        // 2 outputs, d = 3 channels, pool² = 2 positions: official column c·2 + p.
        let (d, pp) = (3, 2);
        let cols = d * pp;
        let v: Vec<f32> = (0..2 * cols).map(|i| i as f32).collect();
        let out = fc1_from_channel_major(&v, cols, d);
        for o in 0..2 {
            for c in 0..d {
                for p in 0..pp {
                    assert_eq!(out[o * cols + p * d + c], v[o * cols + c * pp + p]);
                }
            }
        }
    }
}
