//! Model subcommands: `validate`, `info`, `init`, `predict`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use burn::module::Module;
use codetr_core::model::checkpoint;
use codetr_core::model::{Detector, DetectorConfig};
use codetr_data::eval;
use codetr_data::{CocoDataset, LoadOptions};
use codetr_train::auxiliary::official;
use codetr_train::train::config::CoConfig;

/// Which model: a preset, optionally overridden by a TOML file.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Preset: tiny, paper-r50 or paper-swin-l.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// TOML model config (`preset = ...` plus any overrides); replaces --preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ModelArgs {
    fn resolve(&self) -> anyhow::Result<DetectorConfig> {
        Ok(match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                DetectorConfig::from_toml(&text).with_context(|| p.display().to_string())?
            }
            None => DetectorConfig::preset(&self.preset)?,
        })
    }
}

/// Run a checkpoint over a COCO split (the evaluation resize), print its COCO mAP and
/// optionally write the detections (COCO results json, e.g. for pycocotools).
#[derive(clap::Args)]
pub struct ValidateArgs {
    /// Checkpoint (a step or best/ checkpoint, or `init`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Split folder holding instances.json and images/.
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluate only the first N images (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Write the detections here (written atomically).
    #[arg(long)]
    pub out_detections: Option<PathBuf>,
    /// Decode/resize worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Print one JSON object (AP, AP50, ..., ARl as fractions) instead of the 12 lines.
    #[arg(long)]
    pub json: bool,
    /// How images meet the model's square input: stretch, or letterbox (aspect ratio kept,
    /// padding masked; for models trained with `[data] resize = "letterbox"` and imported
    /// official checkpoints).
    #[arg(long, default_value = "stretch")]
    pub resize: codetr_data::loader::Resize,
    /// With `--resize letterbox`: cap the keep-ratio scale at SHORT,LONG (the official Co-DINO
    /// test pipeline: `800,1333`, with a model input of at least 1333 for its exact scale).
    #[arg(long, value_delimiter = ',', num_args = 1, value_name = "SHORT,LONG")]
    pub letterbox_limits: Option<Vec<u32>>,
    /// With `--resize letterbox`: evaluate as codetr-serve serves with the same
    /// `--input-size`: each image letterboxed into whichever of these canvases (HxW, comma
    /// separated, e.g. `800x1333,1333x800`) shrinks it least, batched per canvas. Default: the
    /// model's square canvas.
    #[arg(long, value_name = "HxW,...", value_parser = codetr_model::preprocess::parse_hw, value_delimiter = ',', conflicts_with = "unpadded")]
    pub input_size: Vec<[u32; 2]>,
    /// With `--resize letterbox`: evaluate as the official test pipeline does, one image at a
    /// time at its own keep-ratio size with no padding (`predict`'s run); slower than batches.
    #[arg(long)]
    pub unpadded: bool,
}

impl ValidateArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self {
            checkpoint: ckpt,
            data,
            limit,
            out_detections,
            workers,
            json,
            resize,
            letterbox_limits,
            input_size,
            unpadded,
        } = self;
        let limits = resize
            .limits_from(letterbox_limits.as_deref())
            .map_err(anyhow::Error::msg)?;
        let device = burn::tensor::Device::flex();
        let (m, _) = checkpoint::load(&ckpt, &device)?;
        let ds = Arc::new(CocoDataset::load_split(&data, LoadOptions::default())?);
        use codetr_train::train::fit::{EvalInput, detect_split_as};
        let input = match (unpadded, input_size.is_empty()) {
            (true, _) => EvalInput::Unpadded,
            (false, true) => EvalInput::Square,
            (false, false) => EvalInput::Canvases(input_size),
        };
        let (gt, dts) = detect_split_as(&m, &ds, limit, workers, (resize, limits), &input)?;
        if let Some(out) = &out_detections {
            codetr_data::fsutil::write_atomic(out, &serde_json::to_vec(&dts)?)?;
        }
        let summary = eval::evaluate(&gt, &ds.json_path, &dts)?;
        if json {
            codetr_data::outln!("{}", serde_json::to_string(&summary)?);
        } else {
            codetr_data::outln!("{summary}");
        }
        Ok(())
    }
}

/// Show a model's dimensions and parameter counts per module (from a preset, a TOML
/// config or a checkpoint).
#[derive(clap::Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Read the model from this checkpoint instead (shows its header too).
    #[arg(long, conflicts_with_all = ["preset", "config"])]
    pub checkpoint: Option<PathBuf>,
}

impl InfoArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self {
            model,
            checkpoint: ckpt,
        } = self;
        let device = burn::tensor::Device::flex();
        let m = match ckpt {
            Some(p) => {
                let (m, h) = checkpoint::load(&p, &device)?;
                codetr_data::outln!(
                    "{}: step {}, classes {:?}, weights sha256 {}",
                    p.display(),
                    h.step,
                    h.class_names,
                    h.identity().unwrap_or("-")
                );
                m
            }
            None => model.resolve()?.init(&device)?,
        };
        print_info(&m);
        Ok(())
    }
}

/// Write a randomly initialised checkpoint (useful to test export and serving end to end).
#[derive(clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output checkpoint path.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the weight initialisation. The weights are drawn on the CPU, so `fit` with the
    /// same model and `[run] seed` starts from these detector weights on any device.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Take class names (and their number) from this COCO instances.json.
    #[arg(long)]
    pub classes_from: Option<PathBuf>,
    /// torchvision-format ResNet weights (.safetensors, .pth or .pt) for the backbone.
    #[arg(long)]
    pub backbone_weights: Option<PathBuf>,
}

impl InitArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self {
            model,
            out,
            seed,
            classes_from,
            backbone_weights,
        } = self;
        let mut cfg = model.resolve()?;
        let names = match classes_from {
            Some(p) => {
                let f = codetr_data::CocoFile::read(&p)?;
                let mut cats = f.categories;
                cats.sort_by_key(|c| c.id);
                cats.into_iter().map(|c| c.name).collect::<Vec<_>>()
            }
            None => (0..cfg.num_classes).map(|i| format!("class_{i}")).collect(),
        };
        cfg.num_classes = names.len();
        let device = burn::tensor::Device::flex();
        // The weights `fit` starts from with the same seed, on any device.
        let mut m = codetr_core::model::init::seeded_on_host(seed, &device, |d| cfg.init(d))?;
        if let Some(w) = backbone_weights {
            let (backbone, report) = m.backbone.load_torchvision(&w)?;
            m.backbone = backbone;
            codetr_data::outln!(
                "loaded {} backbone tensors from {} (ignored: {})",
                report.applied,
                w.display(),
                report.ignored.join(", ")
            );
        }
        let h = checkpoint::save(
            &out,
            &m,
            &names,
            0,
            serde_json::json!({"init_seed": seed}),
            vec![],
        )?;
        codetr_data::outln!(
            "wrote {} ({} parameters, weights sha256 {})",
            out.display(),
            m.num_params(),
            h.identity().unwrap_or("-")
        );
        Ok(())
    }
}

/// Convert an official Co-DINO PyTorch checkpoint into a codetr checkpoint.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// Official checkpoint: the `.pth` of Sense-X/Co-DETR or mmdetection 3.x projects/CO-DETR
    /// (`{"state_dict": …}` or a bare state dict, `module.` prefixes allowed). Parsed, never
    /// unpickled: nothing in the file runs.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The checkpoint's architecture: --preset or --config TOML; by default the official
    /// 5-scale preset of the checkpoint's backbone (paper-r50 or paper-swin-l). The class
    /// count is read from the file.
    #[command(flatten)]
    pub model: ImportModelArgs,
    /// Output codetr checkpoint (written atomically): the detector's weights, ready for
    /// `codetr-export`, `validate`, `predict` or `fit --init`, and the file's auxiliary
    /// training heads (ATSS, RPN, RoI, positive-query projections, denoising embedding) for
    /// a `fit --init` run whose [co] matches them.
    #[arg(long)]
    pub out: PathBuf,
}

/// `import`'s model flags: as `ModelArgs`, with the official preset as default.
#[derive(clap::Args)]
pub struct ImportModelArgs {
    /// Preset: paper-r50 (Co-DINO 5-scale R50), paper-swin-l (Co-DINO 5-scale Swin-L) or
    /// tiny. Default: paper-r50 or paper-swin-l, by the checkpoint's backbone.
    #[arg(long)]
    pub preset: Option<String>,
    /// TOML model config (`preset = ...` plus any overrides); replaces --preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ImportArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let sd = codetr_core::import::pth::StateDict::open(&self.checkpoint)?;
        let base = match (self.model.preset, self.model.config) {
            (None, None) => codetr_core::import::official_preset(&sd),
            (preset, config) => ModelArgs {
                preset: preset.unwrap_or_else(|| "paper-r50".into()),
                config,
            }
            .resolve()?,
        };
        let device = burn::tensor::Device::flex();
        let imported = codetr_core::import::import_state_dict(sd, &base, &device)?;
        codetr_data::outln!("{}:", self.checkpoint.display());
        for line in imported.report.summary() {
            codetr_data::outln!("  {line}");
        }
        let mut meta = serde_json::json!({
            "imported_from": self.checkpoint.display().to_string(),
            "source_sha256": imported.sha256,
        });
        let mut sections = vec![];
        if !imported.training.is_empty() {
            // The auxiliary heads come along, for `fit --init` with the [co] printed here.
            let co =
                official::co_config_of(&imported.training, &CoConfig::default(), &imported.config)?;
            let (heads, report) =
                official::load_official_heads(&imported.training, &imported.config, &co, &device)?;
            codetr_data::outln!(
                "  training heads (K = {}): {} official tensors, {} parameters loaded",
                co.k,
                report.tensors,
                report.params
            );
            for f in &report.filled {
                codetr_data::outln!("    filled: {f}");
            }
            codetr_data::outln!(
                "  to fine-tune with them, `fit --init {}` with [co] k = {}, query_features = \
                 {}, roi.fc_dim = {}, roi.pool = {} (other [co] keys as the defaults: the \
                 official anchors)",
                self.out.display(),
                co.k,
                co.query_features,
                co.roi.fc_dim,
                co.roi.pool
            );
            meta["co"] = serde_json::to_value(&co)?;
            let bytes = heads
                .into_record()
                .into_bytes()
                .map_err(|e| anyhow::anyhow!("cannot serialise the training heads: {e}"))?;
            sections.push(("train_heads".to_string(), bytes.to_vec()));
        }
        let h = checkpoint::save(
            &self.out,
            &imported.model,
            &imported.class_names,
            0,
            meta,
            sections,
        )?;
        codetr_data::outln!(
            "wrote {} in {:.1} s (weights sha256 {})",
            self.out.display(),
            started.elapsed().as_secs_f64(),
            h.identity().unwrap_or("-")
        );
        Ok(())
    }
}

/// Detect objects in one image with a checkpoint.
#[derive(clap::Args)]
pub struct PredictArgs {
    /// Checkpoint written by `init` or `fit`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JPEG, PNG or WebP image (EXIF orientation is applied).
    #[arg(long)]
    pub image: PathBuf,
    /// Minimum score of a printed detection.
    #[arg(long, default_value_t = codetr_model::filter::DEFAULT_SCORE_THRESHOLD)]
    pub score_threshold: f32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// cpu, cuda, cuda:N (a build with --features cuda), vulkan, vulkan:N or vulkan-cpu (a
    /// build with --features vulkan: SPIR-V kernels), wgpu, wgpu:N or wgpu-cpu (a build with
    /// --features wgpu alone: WGSL kernels; wgpu-cpu runs on Mesa's lavapipe).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `stretch`: the image stretched to the model's square input (our own models are trained
    /// so); `letterbox`: keeping its aspect ratio, run unpadded at its own size (official
    /// checkpoints: the official test pipeline runs one image so).
    #[arg(long, default_value = "stretch")]
    pub resize: codetr_data::loader::Resize,
    /// With --resize letterbox: cap the scale at short side ≤ SHORT, long side ≤ LONG (the
    /// official `800,1333`); without it the image is fitted to the model's square input.
    #[arg(long, value_delimiter = ',', num_args = 1, value_name = "SHORT,LONG")]
    pub letterbox_limits: Option<Vec<u32>>,
}

impl PredictArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self {
            checkpoint: ckpt,
            image,
            score_threshold,
            json,
            device,
            resize,
            letterbox_limits,
        } = self;
        let limits = resize
            .limits_from(letterbox_limits.as_deref())
            .map_err(anyhow::Error::msg)?;
        let device = codetr_core::device::select(&device)?;
        let (m, h) = checkpoint::load(&ckpt, &device)?;
        let preds = codetr_core::model::predict::predict_file(
            &m,
            &h.class_names,
            &image,
            score_threshold,
            (resize, limits),
        )?;
        if json {
            codetr_data::outln!("{}", serde_json::to_string(&preds)?);
        } else {
            for p in &preds {
                let b = p.bbox;
                codetr_data::outln!(
                    "{:<16} {:.3}  [{:.1}, {:.1}, {:.1}, {:.1}]",
                    p.label,
                    p.score,
                    b[0],
                    b[1],
                    b[2],
                    b[3]
                );
            }
            codetr_data::outln!("{} detections with score >= {score_threshold}", preds.len());
        }
        Ok(())
    }
}

fn print_info(model: &Detector) {
    let c = model.config();
    let t = &c.transformer;
    codetr_data::outln!(
        "preset {}: {} classes, input {}x{}, levels {:?} (strides {:?})",
        c.preset,
        c.num_classes,
        c.input_size,
        c.input_size,
        c.level_shapes(),
        c.level_strides()
    );
    codetr_data::outln!(
        "{}, d={} heads={} points={} encoder={} decoder={} ffn={} queries={} max_detections={}",
        c.backbone.describe(),
        t.d_model,
        t.num_heads,
        t.num_points,
        t.encoder_layers,
        t.decoder_layers,
        t.ffn_dim,
        t.num_queries,
        c.max_detections
    );
    let rows = [
        ("backbone", model.backbone.num_params()),
        ("neck", model.neck.num_params()),
        ("level_embed", model.level_embed.num_params()),
        ("encoder", model.encoder.num_params()),
        ("query selection", model.selection.num_params()),
        ("decoder", model.decoder.num_params()),
        ("class heads", model.class_heads.num_params()),
        ("box heads", model.box_heads.num_params()),
    ];
    for (name, n) in rows {
        codetr_data::outln!("  {name:<16} {n:>12}");
    }
    codetr_data::outln!("  {:<16} {:>12}", "total", model.num_params());
}
