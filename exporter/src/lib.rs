//! codetr-export: a training checkpoint (ours, or an official Co-DINO `.pth`) → one ONNX graph with the docs/DESIGN.md §7 contract
//! (uint8 NHWC `images` + `orig_sizes` in; `labels`, `scores`, `boxes` out; top-k inside, no
//! NMS, standard opset-17 ops only) and the `codetr.*` metadata the server needs. Only the
//! inference `Detector` is lowered: the auxiliary heads, denoising embedding and
//! positive-query projections of a training checkpoint are dropped (and counted).

pub mod check;
pub mod fp16;
pub mod shapes;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use codetr_core::model::checkpoint;
use codetr_model::{ModelMetadata, Msda, Precision, Resize};

/// The exporter's one error type.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Core(#[from] codetr_core::Error),
    /// `--check`'s data: generating, reading, loading or evaluating it.
    #[error(transparent)]
    Data(#[from] codetr_data::Error),
    #[error("metadata: {0}")]
    Metadata(#[from] codetr_model::Error),
    #[error("invalid option: {0}")]
    Option(String),
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub checkpoint: PathBuf,
    pub out: PathBuf,
    /// Detections per image (default: the checkpoint's `max_detections`).
    pub max_detections: Option<usize>,
    /// Only 17 is produced (GridSample from 16, LayerNormalization from 17; never opset 20's
    /// GridSample).
    pub opset: i64,
    /// How MSDA samples its value maps in the graph.
    pub msda: Msda,
    /// Weights and compute in fp16 (MSDA sampling/softmax and the postprocess stay fp32).
    pub fp16: bool,
    /// Symbolic input height and width (every shape from `Shape` ops).
    pub dynamic_size: bool,
    /// The batch the graph is meant to be served at: the export warns when a tensor of the
    /// graph reaches 2^31 elements at that batch (see [`shapes`]).
    pub serve_batch: u64,
    /// Model config (TOML) for an official PyTorch checkpoint, whose file does not describe
    /// its architecture (default: the `paper-r50` preset, `paper-swin-l` for a Swin backbone). Our checkpoints carry their own.
    pub model_config: Option<PathBuf>,
    /// How the server brings images to the input size: `Stretch`, or `Letterbox` (keep the
    /// aspect ratio, pad; the graph gains the `valid_sizes` input and masks the padding).
    pub resize: Resize,
    /// `[short, long]` keep-ratio scale limits a server applies before letterboxing (the
    /// official pipeline's `[800, 1333]`); letterbox graphs only. Metadata only: the graph
    /// reads each image's valid size from its input.
    pub letterbox_limits: Option<[u32; 2]>,
    /// The fixed graph input `[height, width]` (default: the model's square `input_size`),
    /// e.g. `[800, 1333]`, the official landscape canvas, at 60 % of a 1333² graph's pixels.
    /// Not with `dynamic_size`.
    pub input_size: Option<[u32; 2]>,
    /// A `dynamic_size` graph's input sizes `[height, width]` to record the batch bound at
    /// (metadata `codetr.max_batch_at`; the server never runs a batch above it at a listed
    /// size). Empty: for a letterbox graph with limits `[short, long]`, its landscape and
    /// portrait canvases `[short, long]` and `[long, short]`; otherwise none.
    pub bound_sizes: Vec<[u32; 2]>,
}

impl ExportOptions {
    /// The defaults of `codetr-export`: the checkpoint's top-k, opset 17, GridSample MSDA,
    /// fp32, fixed input size, served at batch 8.
    pub fn new(checkpoint: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            checkpoint: checkpoint.into(),
            out: out.into(),
            max_detections: None,
            opset: 17,
            msda: Msda::GridSample,
            fp16: false,
            dynamic_size: false,
            serve_batch: 8,
            model_config: None,
            resize: Resize::Stretch,
            letterbox_limits: None,
            input_size: None,
            bound_sizes: Vec::new(),
        }
    }
}

/// What the export did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub out: PathBuf,
    pub nodes: usize,
    pub weights: usize,
    /// Parameters of the checkpoint that are not in the graph (training-only heads).
    pub dropped_params: usize,
    /// What importing an official checkpoint consumed (None for our own checkpoints).
    pub import: Option<codetr_core::import::ImportReport>,
    pub bytes: usize,
    /// `None` for a `--dynamic-size` export.
    pub input_size: Option<[usize; 2]>,
    pub max_detections: usize,
    /// What the fp16 pass did (`--fp16`).
    pub fp16: Option<fp16::Fp16Report>,
    /// The largest intermediate tensor at the model's input size and the largest batch whose
    /// every tensor stays under 2^31 elements.
    pub intermediate: shapes::Bound,
    /// A dynamic-size graph's bounds at [`ExportOptions::bound_sizes`] (or their default), as
    /// written to `codetr.max_batch_at`.
    pub bounds_at: Vec<shapes::Bound>,
}

/// Exports `opts.checkpoint` to `opts.out` (written atomically: no partial file on error).
pub fn export(opts: &ExportOptions) -> Result<ExportReport> {
    if opts.opset != 17 {
        return Err(ExportError::Option(format!(
            "opset {} is not supported (the graph is opset 17)",
            opts.opset
        )));
    }
    let device = Device::flex();
    let Loaded {
        mut model,
        class_names,
        sha256,
        metrics,
        dropped_params,
        import,
    } = load_source(&opts.checkpoint, opts.model_config.as_deref(), &device)?;
    let cfg = model.config().clone();
    let q_c = cfg.transformer.num_queries * cfg.num_classes;
    let k = opts.max_detections.unwrap_or(cfg.max_detections);
    if k == 0 || k > q_c {
        return Err(ExportError::Option(format!(
            "--max-detections {k} must be in 1..={q_c} (queries × classes)"
        )));
    }
    let mut exported_cfg = cfg.clone();
    exported_cfg.max_detections = k;
    model.config = exported_cfg;
    let side = cfg.input_size as usize;
    let fixed = match (opts.input_size, opts.dynamic_size) {
        (Some(_), true) => {
            return Err(ExportError::Option(
                "--input-size fixes the graph's size; --dynamic-size leaves it open: give one"
                    .into(),
            ));
        }
        (Some([h, w]), false) => {
            if !(codetr_model::MIN_INPUT_SIDE..=codetr_model::MAX_INPUT_SIDE).contains(&h)
                || !(codetr_model::MIN_INPUT_SIDE..=codetr_model::MAX_INPUT_SIDE).contains(&w)
            {
                return Err(ExportError::Option(format!(
                    "--input-size {h}x{w}: each side must be in {}..={}",
                    codetr_model::MIN_INPUT_SIDE,
                    codetr_model::MAX_INPUT_SIDE
                )));
            }
            [h as usize, w as usize]
        }
        (None, _) => [side, side],
    };
    let size = (!opts.dynamic_size).then_some(fixed);
    let bound_sizes = bound_sizes(opts, cfg.level_strides().last().map(|&s| s as u32))?;
    let g = model.emit_with(size, opts.msda, opts.resize)?;
    // The graph holds its own copy of every weight: the model's goes before the graph is
    // encoded (the peak memory of converting a large checkpoint is copies of its weights).
    drop(model);
    let nodes = g.num_nodes();
    let weights = g.num_weights();
    let mut meta = ModelMetadata {
        format_version: opts.resize.min_format_version(),
        classes: class_names,
        input_size: size.map(|[h, w]| [h as u32, w as u32]),
        resize: opts.resize,
        mean: cfg.pixel_mean,
        std: cfg.pixel_std,
        max_detections: k,
        preset: cfg.preset.clone(),
        checkpoint_sha256: sha256,
        metrics,
        msda: Some(opts.msda),
        precision: Some(if opts.fp16 {
            Precision::Fp16
        } else {
            Precision::Fp32
        }),
        max_batch: None,
        letterbox_limits: opts.letterbox_limits,
        max_batch_at: Vec::new(),
        // only a letterbox graph pads: its canvases should be multiples of this
        size_multiple: (opts.resize == codetr_model::Resize::Letterbox)
            .then(|| cfg.level_strides().last().map(|&s| s as u32))
            .flatten(),
    };
    meta.format_version = meta.min_format_version();
    let props = meta.try_to_props()?;
    let mut proto = g.finish(opts.opset, "codetr-export", props);
    let fp16 = if opts.fp16 {
        Some(fp16::convert(&mut proto)?)
    } else {
        None
    };
    let nodes = proto.graph.as_ref().map_or(nodes, |g| g.node.len());
    let intermediate = shapes::bound(&proto, fixed)?;
    let bounds_at = bound_sizes
        .iter()
        .map(|&[h, w]| shapes::bound(&proto, [h as usize, w as usize]))
        .collect::<Result<Vec<_>>>()?;
    for b in std::iter::once(&intermediate).chain(&bounds_at) {
        if !b.fits(opts.serve_batch) {
            tracing::warn!(
                "at batch {} and input {}x{} a tensor of this graph reaches 2^31 elements (CUDA \
                 kernels fail on it); the largest batch that stays within is {} (largest tensor \
                 at batch 1: {} {:?} of {})",
                opts.serve_batch,
                b.input_size[0],
                b.input_size[1],
                b.max_batch,
                b.at_batch_1.op,
                b.at_batch_1.shape,
                b.at_batch_1.node,
            );
        }
    }
    // The bounds travel in the metadata: the server never runs a batch above them.
    meta.max_batch = Some(intermediate.max_batch);
    meta.max_batch_at = bounds_at
        .iter()
        .map(|b| codetr_model::SizeBound {
            input_size: [b.input_size[0] as u32, b.input_size[1] as u32],
            max_batch: b.max_batch,
        })
        .collect();
    meta.format_version = meta.min_format_version();
    proto.metadata_props = meta
        .try_to_props()?
        .into_iter()
        .map(|(key, value)| codetr_core::onnx::proto::StringStringEntryProto { key, value })
        .collect();
    let bytes = codetr_core::onnx::builder::write(&proto, &opts.out)? as usize;
    Ok(ExportReport {
        out: opts.out.clone(),
        nodes,
        weights,
        dropped_params,
        import,
        bytes,
        input_size: size,
        max_detections: k,
        fp16,
        intermediate,
        bounds_at,
    })
}

/// The input sizes a dynamic-size export records batch bounds at: the options' (checked), or
/// by default a letterbox graph's landscape and portrait canvases at its limits.
fn bound_sizes(opts: &ExportOptions, multiple: Option<u32>) -> Result<Vec<[u32; 2]>> {
    if !opts.dynamic_size {
        return match opts.bound_sizes.as_slice() {
            [] => Ok(Vec::new()),
            _ => Err(ExportError::Option(
                "--bound-sizes is for a --dynamic-size graph (a fixed graph's bound is at its \
                 own size)"
                    .into(),
            )),
        };
    }
    let sizes = match (opts.bound_sizes.as_slice(), opts.letterbox_limits) {
        // the official canvases, and the same rounded up to the coarsest stride (the ones
        // that keep the padding mask aligned)
        ([], Some([short, long])) => {
            let up = |v: u32| multiple.map_or(v, |m| v.div_ceil(m) * m);
            let mut v: Vec<[u32; 2]> = Vec::new();
            for hw in [
                [short, long],
                [long, short],
                [up(short), up(long)],
                [up(long), up(short)],
            ] {
                if !v.contains(&hw) {
                    v.push(hw);
                }
            }
            v
        }
        (given, _) => given.to_vec(),
    };
    let range = codetr_model::MIN_INPUT_SIDE..=codetr_model::MAX_INPUT_SIDE;
    for (i, &[h, w]) in sizes.iter().enumerate() {
        if !range.contains(&h) || !range.contains(&w) {
            return Err(ExportError::Option(format!(
                "--bound-sizes {h}x{w}: each side must be in {}..={}",
                range.start(),
                range.end()
            )));
        }
        if sizes[..i].contains(&[h, w]) {
            return Err(ExportError::Option(format!(
                "--bound-sizes {h}x{w} is given twice"
            )));
        }
    }
    Ok(sizes)
}

/// The model a checkpoint holds, and what the export metadata says about it.
pub struct Loaded {
    pub model: codetr_core::model::Detector,
    pub class_names: Vec<String>,
    /// The checkpoint's identity: our `model` section's SHA-256, or the `.pth` file's.
    pub sha256: String,
    /// Validation figures the checkpoint carries (ours only).
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Parameters of training-only heads, not in the graph.
    pub dropped_params: usize,
    pub import: Option<codetr_core::import::ImportReport>,
}

/// Loads one of our checkpoints, or imports an official Co-DINO `.pth` (recognised by its
/// content, not its name) with the architecture of `model_config` (TOML; default: `paper-r50`, or
/// `paper-swin-l` for a checkpoint with a Swin backbone).
pub fn load_source(ckpt: &Path, model_config: Option<&Path>, device: &Device) -> Result<Loaded> {
    if codetr_core::import::pth::looks_like_pytorch(ckpt) {
        let sd = codetr_core::import::pth::StateDict::open(ckpt)?;
        let base = match model_config {
            None => codetr_core::import::official_preset(&sd),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| codetr_core::Error::io(p, e))?;
                codetr_core::model::DetectorConfig::from_toml(&text)?
            }
        };
        let imported = codetr_core::import::import_state_dict(sd, &base, device)?;
        let report = imported.report;
        return Ok(Loaded {
            model: imported.model,
            class_names: imported.class_names,
            sha256: imported.sha256,
            metrics: Default::default(),
            dropped_params: report.training_only.values().map(|(_, p)| p).sum(),
            import: Some(report),
        });
    }
    if let Some(p) = model_config {
        return Err(ExportError::Option(format!(
            "--model-config {} applies to official PyTorch checkpoints; {} is a codetr \
             checkpoint, which carries its own config",
            p.display(),
            ckpt.display()
        )));
    }
    let (model, header) = checkpoint::load(ckpt, device)?;
    let (_, sections) = checkpoint::read(ckpt)?;
    Ok(Loaded {
        model,
        class_names: header.class_names.clone(),
        sha256: header.identity().unwrap_or_default().to_string(),
        metrics: header
            .meta
            .get("val")
            .and_then(|v| v.as_object())
            .cloned()
            .unwrap_or_default(),
        dropped_params: training_only_params(ckpt, &sections)?,
        import: None,
    })
}

/// Parameters of a training checkpoint's training-only heads (aux heads, dn embedding,
/// positive-query projections), counted from the `train_heads` section's tensor table.
fn training_only_params(path: &Path, sections: &[(String, Vec<u8>)]) -> Result<usize> {
    match sections.iter().find(|(n, _)| n == "train_heads") {
        None => Ok(0), // an inference checkpoint (init, best/)
        Some((name, bytes)) => Ok(checkpoint::record_elements(path, name, bytes)?),
    }
}

/// The default output path next to the checkpoint.
pub fn default_out(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("onnx")
}
