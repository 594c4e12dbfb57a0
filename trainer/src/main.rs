//! `codetr-train`: the trainer's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use clap::{Parser, Subcommand};
use codetr_train::data::synth::{self, SynthConfig};
use codetr_train::data::{CocoDataset, LoadOptions, Loader, LoaderConfig};
use codetr_train::eval;
use codetr_train::model::checkpoint;
use codetr_train::model::{Detector, DetectorConfig};

#[derive(Parser)]
#[command(
    name = "codetr-train",
    version,
    about = "Co-DETR training: data, synthetic datasets, COCO evaluation, the Co-DINO model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a deterministic synthetic COCO dataset (DIR/{train,val}/instances.json + images/).
    Synth {
        /// Output directory (created; existing split folders are overwritten file by file).
        #[arg(long)]
        out: PathBuf,
        /// Number of training images.
        #[arg(long, default_value_t = SynthConfig::default().train)]
        train: usize,
        /// Number of validation images.
        #[arg(long, default_value_t = SynthConfig::default().val)]
        val: usize,
        /// Seed: the same seed and flags give byte-identical files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image size as WIDTHxHEIGHT (64..=4096 each).
        #[arg(long, default_value = "256x256", value_parser = parse_size)]
        size: (u32, u32),
        /// Do not write the statistics to DIR/stats.json (they are always printed).
        #[arg(long)]
        no_stats_file: bool,
    },
    /// Validate a COCO dataset with the strict reader and print its statistics.
    Check {
        /// A split folder holding instances.json and images/ (the synth layout).
        #[arg(long, conflicts_with_all = ["json", "images"])]
        data: Option<PathBuf>,
        /// The annotations file (with --images).
        #[arg(long, requires = "images")]
        json: Option<PathBuf>,
        /// The folder that `file_name` entries are relative to (with --json).
        #[arg(long, requires = "json")]
        images: Option<PathBuf>,
    },
    /// COCO bbox evaluation (pycocotools semantics) of a detections file against ground truth.
    Eval {
        /// Ground-truth COCO instances json.
        #[arg(long)]
        gt: PathBuf,
        /// Detections: a COCO results list of {image_id, category_id, bbox [x,y,w,h], score}.
        #[arg(long)]
        dt: PathBuf,
        /// Print one JSON object (AP, AP50, ..., ARl as fractions) instead of the 12 lines.
        #[arg(long)]
        json: bool,
    },
    /// Run a checkpoint over a COCO split (the evaluation resize), print its COCO mAP and
    /// optionally write the detections (COCO results json, e.g. for pycocotools).
    Validate {
        /// Checkpoint (a step or best/ checkpoint, or `init`).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Split folder holding instances.json and images/.
        #[arg(long)]
        data: PathBuf,
        /// Evaluate only the first N images (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Write the detections here (written atomically).
        #[arg(long)]
        out_detections: Option<PathBuf>,
        /// Decode/resize worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Print one JSON object (AP, AP50, ..., ARl as fractions) instead of the 12 lines.
        #[arg(long)]
        json: bool,
    },
    /// Show a model's dimensions and parameter counts per module (from a preset, a TOML
    /// config or a checkpoint).
    Info {
        #[command(flatten)]
        model: ModelArgs,
        /// Read the model from this checkpoint instead (shows its header too).
        #[arg(long, conflicts_with_all = ["preset", "config"])]
        checkpoint: Option<PathBuf>,
    },
    /// Write a randomly initialised checkpoint (useful to test export and serving end to end).
    Init {
        #[command(flatten)]
        model: ModelArgs,
        /// Output checkpoint path.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the weight initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Take class names (and their number) from this COCO instances.json.
        #[arg(long)]
        classes_from: Option<PathBuf>,
        /// torchvision-format ResNet weights (.safetensors, .pth or .pt) for the backbone.
        #[arg(long)]
        backbone_weights: Option<PathBuf>,
    },
    /// Detect objects in one image with a checkpoint.
    Predict {
        /// Checkpoint written by `init` or `fit`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// JPEG, PNG or WebP image (EXIF orientation is applied).
        #[arg(long)]
        image: PathBuf,
        /// Minimum score of a printed detection.
        #[arg(long, default_value_t = codetr_model::filter::DEFAULT_SCORE_THRESHOLD)]
        score_threshold: f32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// cpu, cuda, cuda:N (a build with --features cuda), vulkan, vulkan:N or vulkan-cpu (a
        /// build with --features vulkan).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Train Co-DETR (Co-DINO + auxiliary heads) on COCO-format data. Every flag overrides the
    /// TOML; with no file the defaults train `tiny` on data/synth.
    Fit {
        /// Run config (TOML: [run], [data], [model], [schedule], [co], [dn], [loss]).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Continue the run in this dir from its newest checkpoint (its saved config is used;
        /// other flags are ignored).
        #[arg(long, conflicts_with_all = ["config", "data", "preset", "k", "steps", "batch_size", "accumulate", "checkpoint_every", "seed", "out", "init"])]
        resume: Option<PathBuf>,
        /// A dataset root as written by `synth` (uses DIR/train and DIR/val).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Model preset (tiny, paper-r50); replaces the config's [model] table.
        #[arg(long)]
        preset: Option<String>,
        /// Number of auxiliary heads: 0 = plain DINO, 1 = +ATSS, 2 = +ATSS+Faster-RCNN.
        #[arg(long)]
        k: Option<usize>,
        /// Optimizer steps in total.
        #[arg(long)]
        steps: Option<u64>,
        /// Images per step.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Sum the gradients of N batches into one optimizer step (each loss ÷ N): an
        /// effective batch of batch-size × N in the memory of one batch.
        #[arg(long)]
        accumulate: Option<usize>,
        /// Write a resumable checkpoint every N steps.
        #[arg(long)]
        checkpoint_every: Option<u64>,
        /// Seed of initialisation, data order, augmentation and denoising noise.
        #[arg(long)]
        seed: Option<u64>,
        /// Run directory (config.toml, log.jsonl, eval.jsonl, checkpoints/, best/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Warm start from this checkpoint's detector weights (same model config and classes;
        /// training heads too if it is a step checkpoint). Optimizer, step and lr schedule
        /// start fresh. Overrides the config's [run] init.
        #[arg(long)]
        init: Option<PathBuf>,
        /// cpu, cuda, cuda:N (a build with --features cuda), vulkan, vulkan:N or vulkan-cpu (a
        /// build with --features vulkan).
        #[arg(long)]
        device: Option<String>,
        /// No progress bar (logs only).
        #[arg(long)]
        quiet: bool,
    },
    /// Draw a run's loss curves and validation mAP into a PNG.
    Plot {
        /// The run dir (holds log.jsonl and eval.jsonl).
        run: PathBuf,
        /// Output PNG (default RUN/curves.png).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure the batching loader's throughput (decode + augment + resize on worker threads).
    BenchLoader {
        /// A split folder holding instances.json and images/.
        #[arg(long)]
        data: PathBuf,
        /// Images per batch.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Square sizes, comma separated (one drawn per batch).
        #[arg(long, default_value = "256", value_delimiter = ',')]
        sizes: Vec<u32>,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Batches to time (after one warm-up batch).
        #[arg(long, default_value_t = 50)]
        batches: usize,
        /// Turn augmentation off (evaluation-style loading).
        #[arg(long)]
        no_augment: bool,
    },
}

/// Which model: a preset, optionally overridden by a TOML file.
#[derive(clap::Args)]
struct ModelArgs {
    /// Preset: tiny or paper-r50.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// TOML model config (`preset = ...` plus any overrides); replaces --preset.
    #[arg(long)]
    config: Option<PathBuf>,
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

fn print_info(model: &Detector) {
    let c = model.config();
    let t = &c.transformer;
    println!(
        "preset {}: {} classes, input {}x{}, levels {:?} (strides {:?})",
        c.preset,
        c.num_classes,
        c.input_size,
        c.input_size,
        c.level_shapes(),
        c.level_strides()
    );
    println!(
        "ResNet-{} (width {}), d={} heads={} points={} encoder={} decoder={} ffn={} queries={} max_detections={}",
        c.backbone.depth,
        c.backbone.base_width,
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
        println!("  {name:<16} {n:>12}");
    }
    println!("  {:<16} {:>12}", "total", model.num_params());
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WIDTHxHEIGHT, got {s:?}"))?;
    let w: u32 = w
        .trim()
        .parse()
        .map_err(|_| format!("bad width in {s:?}"))?;
    let h: u32 = h
        .trim()
        .parse()
        .map_err(|_| format!("bad height in {s:?}"))?;
    Ok((w, h))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Plot { run, out } => {
            let out = out.unwrap_or_else(|| run.join("curves.png"));
            let labelled = codetr_train::train::plot::plot_run(&run, &out)?;
            if !labelled {
                tracing::warn!("no DejaVuSans.ttf found: curves drawn without text labels");
            }
            println!("{}", out.display());
        }
        Command::Fit {
            config,
            resume,
            data,
            preset,
            k,
            steps,
            batch_size,
            accumulate,
            checkpoint_every,
            seed,
            out,
            init,
            device,
            quiet,
        } => {
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
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Synth {
            out,
            train,
            val,
            seed,
            size,
            no_stats_file,
        } => {
            let cfg = SynthConfig {
                train,
                val,
                seed,
                width: size.0,
                height: size.1,
            };
            let t = Instant::now();
            let stats = synth::generate(&out, &cfg, true)?;
            println!("{stats}");
            if !no_stats_file {
                let bytes = serde_json::to_vec_pretty(&stats)?;
                codetr_train::fsutil::write_atomic(&out.join("stats.json"), &bytes)?;
            }
            tracing::info!(
                seconds = t.elapsed().as_secs_f64(),
                "synthetic dataset written to {}",
                out.display()
            );
        }
        Command::Check { data, json, images } => {
            let ds = match (data, json, images) {
                (Some(d), _, _) => CocoDataset::load_split(&d, LoadOptions::default())?,
                (None, Some(j), Some(i)) => CocoDataset::load(&j, &i, LoadOptions::default())?,
                _ => anyhow::bail!("give --data DIR, or --json FILE with --images DIR"),
            };
            let objects: usize = ds.images.iter().map(|i| i.objects.len()).sum();
            let crowd: usize = ds
                .images
                .iter()
                .flat_map(|i| &i.objects)
                .filter(|o| o.iscrowd)
                .count();
            println!("{}: OK", ds.json_path.display());
            println!(
                "  images: {}  objects: {objects} (crowd: {crowd})  classes: {}",
                ds.images.len(),
                ds.num_classes()
            );
            let mut per_class = vec![0usize; ds.num_classes()];
            let mut buckets = [0usize; 3];
            for o in ds.images.iter().flat_map(|i| &i.objects) {
                per_class[o.label] += 1;
                buckets[if o.area < 32.0 * 32.0 {
                    0
                } else if o.area < 96.0 * 96.0 {
                    1
                } else {
                    2
                }] += 1;
            }
            println!(
                "  area small/medium/large: {}/{}/{}",
                buckets[0], buckets[1], buckets[2]
            );
            for (c, n) in ds.categories.iter().zip(per_class) {
                println!("  {:>4} {:<20} {n}", c.id, c.name);
            }
        }
        Command::Eval { gt, dt, json } => {
            let text = eval::run_eval_cli(&gt, &dt, json)?;
            println!("{text}");
        }
        Command::Validate {
            checkpoint: ckpt,
            data,
            limit,
            out_detections,
            workers,
            json,
        } => {
            let device = burn::tensor::Device::flex();
            let (m, _) = checkpoint::load(&ckpt, &device)?;
            let ds = Arc::new(CocoDataset::load_split(&data, LoadOptions::default())?);
            let (gt, dts) = codetr_train::train::fit::detect_split(&m, &ds, limit, workers)?;
            if let Some(out) = &out_detections {
                codetr_train::fsutil::write_atomic(out, &serde_json::to_vec(&dts)?)?;
            }
            let summary = eval::evaluate(&gt, &ds.json_path, &dts)?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{summary}");
            }
        }
        Command::Info {
            model,
            checkpoint: ckpt,
        } => {
            let device = burn::tensor::Device::flex();
            let m = match ckpt {
                Some(p) => {
                    let (m, h) = checkpoint::load(&p, &device)?;
                    println!(
                        "{}: step {}, classes {:?}, model sha256 {}",
                        p.display(),
                        h.step,
                        h.class_names,
                        h.model_sha256().unwrap_or("-")
                    );
                    m
                }
                None => model.resolve()?.init(&device)?,
            };
            print_info(&m);
        }
        Command::Init {
            model,
            out,
            seed,
            classes_from,
            backbone_weights,
        } => {
            let mut cfg = model.resolve()?;
            let names = match classes_from {
                Some(p) => {
                    let f = codetr_train::data::CocoFile::read(&p)?;
                    let mut cats = f.categories;
                    cats.sort_by_key(|c| c.id);
                    cats.into_iter().map(|c| c.name).collect::<Vec<_>>()
                }
                None => (0..cfg.num_classes).map(|i| format!("class_{i}")).collect(),
            };
            cfg.num_classes = names.len();
            let device = burn::tensor::Device::flex();
            device.seed(seed);
            let mut m = cfg.init(&device)?;
            if let Some(w) = backbone_weights {
                let (backbone, report) = m.backbone.load_torchvision(&w)?;
                m.backbone = backbone;
                println!(
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
            println!(
                "wrote {} ({} parameters, model sha256 {})",
                out.display(),
                m.num_params(),
                h.model_sha256().unwrap_or("-")
            );
        }
        Command::Predict {
            checkpoint: ckpt,
            image,
            score_threshold,
            json,
            device,
        } => {
            let device = codetr_train::device::select(&device)?;
            let (m, h) = checkpoint::load(&ckpt, &device)?;
            let preds = codetr_train::model::predict::predict_file(
                &m,
                &h.class_names,
                &image,
                score_threshold,
            )?;
            if json {
                println!("{}", serde_json::to_string(&preds)?);
            } else {
                for p in &preds {
                    let b = p.bbox;
                    println!(
                        "{:<16} {:.3}  [{:.1}, {:.1}, {:.1}, {:.1}]",
                        p.label, p.score, b[0], b[1], b[2], b[3]
                    );
                }
                println!("{} detections with score >= {score_threshold}", preds.len());
            }
        }
        Command::BenchLoader {
            data,
            batch_size,
            sizes,
            workers,
            batches,
            no_augment,
        } => {
            let ds = Arc::new(CocoDataset::load_split(&data, LoadOptions::default())?);
            let mut cfg = LoaderConfig {
                batch_size,
                sizes,
                workers,
                prefetch: 2 * workers.max(1),
                ..LoaderConfig::default()
            };
            if no_augment {
                cfg.augment = None;
            }
            let loader = Loader::new(ds, cfg)?;
            let per_epoch = loader.batches_per_epoch();
            let (mut imgs, mut done, mut epoch) = (0usize, 0usize, 0u64);
            let mut t0 = None;
            let bar = indicatif::ProgressBar::new(batches as u64 + 1);
            'outer: loop {
                for b in loader.epoch(epoch, 0) {
                    let b = b.context("loading a batch")?;
                    bar.inc(1);
                    if t0.is_none() {
                        t0 = Some(Instant::now()); // the first batch is warm-up
                        continue;
                    }
                    imgs += b.len();
                    done += 1;
                    if done >= batches {
                        break 'outer;
                    }
                }
                epoch += 1;
                if per_epoch == 0 {
                    break;
                }
            }
            bar.finish_and_clear();
            let secs = t0
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(0.0)
                .max(1e-9);
            let r = serde_json::json!({
                "images": imgs, "batches": done, "seconds": secs,
                "images_per_s": imgs as f64 / secs, "batches_per_s": done as f64 / secs,
                "workers": workers, "batch_size": batch_size, "augment": !no_augment,
            });
            println!("{r}");
        }
    }
    Ok(())
}
