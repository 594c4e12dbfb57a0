//! Training subcommands: `fit`, `plot`.

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::TypedValueParser;
use codetr_core::model::autocast::Precision;

/// `--precision`: the names `--help` lists, parsed into the config's enum.
fn precision_parser() -> impl TypedValueParser<Value = Precision> {
    clap::builder::PossibleValuesParser::new(Precision::NAMES)
        .try_map(|s| Precision::parse(&s).ok_or_else(|| format!("unknown precision {s}")))
}

/// Train Co-DETR (Co-DINO + auxiliary heads) on COCO-format data. Every flag overrides the
/// TOML; with no file the defaults train `tiny` on data/synth.
#[derive(clap::Args)]
pub struct FitArgs {
    /// Run config (TOML: [run], [data], [model], [schedule], [co], [dn], [loss]).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this dir from its newest checkpoint (its saved config is used;
    /// other flags are ignored).
    #[arg(long, conflicts_with_all = ["config", "data", "preset", "k", "steps", "batch_size", "accumulate", "precision", "checkpoint_every", "seed", "out", "init"])]
    pub resume: Option<PathBuf>,
    /// A dataset root as written by `synth`: trains on DIR/train, picks `best/` on DIR/val,
    /// and, when DIR/test exists, reports the held-out test split beside each validation.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Model preset (tiny, paper-r50, paper-swin-l); replaces the config's [model] table.
    #[arg(long)]
    pub preset: Option<String>,
    /// Number of auxiliary heads: 0 = plain DINO, 1 = +ATSS, 2 = +ATSS+Faster-RCNN.
    #[arg(long)]
    pub k: Option<usize>,
    /// Optimizer steps in total.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Images per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Sum the gradients of N batches into one optimizer step (each loss ÷ N): an
    /// effective batch of batch-size × N in the memory of one batch.
    #[arg(long)]
    pub accumulate: Option<usize>,
    /// Type of the step's matrix products and convolutions: f32, bf16 (f32's range: no loss
    /// scaling) or f16 (dynamic loss scaling). Parameters, norms and losses stay f32, and so do
    /// validation, checkpoints and export. Refused when the device cannot compute in it.
    #[arg(long, value_parser = precision_parser())]
    pub precision: Option<Precision>,
    /// Write a resumable checkpoint every N steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Seed of initialisation, data order, augmentation and denoising noise.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run directory (config.toml, log.jsonl, eval.jsonl, checkpoints/, best/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Warm start from this checkpoint's detector weights (same model config and classes;
    /// training heads too if it is a step checkpoint). Optimizer, step and lr schedule
    /// start fresh. Overrides the config's [run] init.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// cpu, cuda, cuda:N (a build with --features cuda), vulkan, vulkan:N or vulkan-cpu (a
    /// build with --features vulkan: SPIR-V kernels), wgpu, wgpu:N or wgpu-cpu (a build with
    /// --features wgpu alone: WGSL kernels; wgpu-cpu runs on Mesa's lavapipe).
    #[arg(long)]
    pub device: Option<String>,
    /// No progress bar (logs only).
    #[arg(long)]
    pub quiet: bool,
}

impl FitArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self {
            config,
            resume,
            data,
            preset,
            k,
            steps,
            batch_size,
            accumulate,
            precision,
            checkpoint_every,
            seed,
            out,
            init,
            device,
            quiet,
        } = self;
        use codetr_train::train::config::FitConfig;
        let (cfg, resume) = if let Some(dir) = resume {
            let text = std::fs::read_to_string(dir.join("config.toml"))
                .with_context(|| format!("{}: not a run dir", dir.display()))?;
            let mut cfg = FitConfig::from_toml(&text)?;
            cfg.run.out = dir;
            if let Some(d) = device {
                cfg.run.device = d;
            }
            (cfg, true)
        } else {
            let mut cfg = match config {
                Some(p) => FitConfig::from_toml(
                    &std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )
                .with_context(|| p.display().to_string())?,
                None => FitConfig::default(),
            };
            if let Some(d) = data {
                cfg.data.train = d.join("train");
                cfg.data.val = d.join("val");
                let test = d.join("test");
                cfg.data.test = test.join("instances.json").is_file().then_some(test);
            }
            if let Some(p) = preset {
                let mut t = toml::Table::new();
                t.insert("preset".into(), toml::Value::String(p));
                cfg.model = t;
            }
            if let Some(k) = k {
                cfg.co.k = k;
            }
            if let Some(s) = steps {
                cfg.schedule.steps = s;
            }
            if let Some(b) = batch_size {
                cfg.schedule.batch_size = b;
            }
            if let Some(a) = accumulate {
                cfg.schedule.accumulate = a;
            }
            if let Some(p) = precision {
                cfg.schedule.precision = p;
            }
            if let Some(c) = checkpoint_every {
                cfg.run.checkpoint_every = c;
            }
            if let Some(s) = seed {
                cfg.run.seed = s;
            }
            if let Some(o) = out {
                cfg.run.out = o;
            }
            if let Some(i) = init {
                cfg.run.init = Some(i);
            }
            if let Some(d) = device {
                cfg.run.device = d;
            }
            (cfg, false)
        };
        let report = codetr_train::train::fit::fit(cfg, resume, !quiet)?;
        codetr_data::outln!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    }
}

/// Draw a run's loss curves and validation mAP into a PNG.
#[derive(clap::Args)]
pub struct PlotArgs {
    /// The run dir (holds log.jsonl and eval.jsonl).
    pub run: PathBuf,
    /// Output PNG (default RUN/curves.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl PlotArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self { run, out } = self;
        let out = out.unwrap_or_else(|| run.join("curves.png"));
        let labelled = codetr_train::train::plot::plot_run(&run, &out)?;
        if !labelled {
            tracing::warn!("no DejaVuSans.ttf found: curves drawn without text labels");
        }
        codetr_data::outln!("{}", out.display());
        Ok(())
    }
}
