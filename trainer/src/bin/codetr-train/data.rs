//! Data subcommands: `synth`, `check`, `eval`, `bench-loader`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use codetr_data::eval;
use codetr_data::synth::{self, SynthConfig};
use codetr_data::{CocoDataset, LoadOptions, Loader, LoaderConfig};

/// Write a deterministic synthetic COCO dataset (DIR/{train,val,test}/instances.json + images/).
#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output directory (created; existing split folders are overwritten file by file).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of training images.
    #[arg(long, default_value_t = SynthConfig::default().train)]
    pub train: usize,
    /// Number of validation images: the split that picks the best checkpoint.
    #[arg(long, default_value_t = SynthConfig::default().val)]
    pub val: usize,
    /// Number of held-out test images (DIR/test): drawn from their own stream of the seed,
    /// never trained on or used for selection; report accuracy on them. 0 writes no test split.
    #[arg(long, default_value_t = SynthConfig::default().test)]
    pub test: usize,
    /// Seed: the same seed and flags give byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image size as WIDTHxHEIGHT (64..=4096 each).
    #[arg(long, default_value = "256x256", value_parser = parse_size)]
    pub size: (u32, u32),
    /// Do not write the statistics to DIR/stats.json (they are always printed).
    #[arg(long)]
    pub no_stats_file: bool,
}

impl SynthArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self {
            out,
            train,
            val,
            test,
            seed,
            size,
            no_stats_file,
        } = self;
        let cfg = SynthConfig {
            train,
            val,
            test,
            seed,
            width: size.0,
            height: size.1,
        };
        let t = Instant::now();
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {pos}/{len} images ({per_sec}, eta {eta})",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let progress = |p: synth::Progress| match p {
            synth::Progress::Start { images } => bar.set_length(images),
            synth::Progress::Split(name) => bar.set_message(name),
            synth::Progress::Image => bar.inc(1),
            synth::Progress::Done => bar.finish_and_clear(),
        };
        let stats = synth::generate(&out, &cfg, Some(&progress))?;
        codetr_data::outln!("{stats}");
        if !no_stats_file {
            let bytes = serde_json::to_vec_pretty(&stats)?;
            codetr_data::fsutil::write_atomic(&out.join("stats.json"), &bytes)?;
        }
        tracing::info!(
            seconds = t.elapsed().as_secs_f64(),
            "synthetic dataset written to {}",
            out.display()
        );
        Ok(())
    }
}

/// Validate a COCO dataset with the strict reader and print its statistics.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// A split folder holding instances.json and images/ (the synth layout).
    #[arg(long, conflicts_with_all = ["json", "images"])]
    pub data: Option<PathBuf>,
    /// The annotations file (with --images).
    #[arg(long, requires = "images")]
    pub json: Option<PathBuf>,
    /// The folder that `file_name` entries are relative to (with --json).
    #[arg(long, requires = "json")]
    pub images: Option<PathBuf>,
}

impl CheckArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self { data, json, images } = self;
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
        codetr_data::outln!("{}: OK", ds.json_path.display());
        codetr_data::outln!(
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
        codetr_data::outln!(
            "  area small/medium/large: {}/{}/{}",
            buckets[0],
            buckets[1],
            buckets[2]
        );
        for (c, n) in ds.categories.iter().zip(per_class) {
            codetr_data::outln!("  {:>4} {:<20} {n}", c.id, c.name);
        }
        Ok(())
    }
}

/// COCO bbox evaluation (pycocotools semantics) of a detections file against ground truth.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Ground-truth COCO instances json.
    #[arg(long)]
    pub gt: PathBuf,
    /// Detections: a COCO results list of {image_id, category_id, bbox [x,y,w,h], score}.
    #[arg(long)]
    pub dt: PathBuf,
    /// Print one JSON object (AP, AP50, ..., ARl as fractions) instead of the 12 lines.
    #[arg(long)]
    pub json: bool,
}

impl EvalArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self { gt, dt, json } = self;
        let text = eval::run_eval_cli(&gt, &dt, json)?;
        codetr_data::outln!("{text}");
        Ok(())
    }
}

/// Measure the batching loader's throughput (decode + augment + resize on worker threads).
#[derive(clap::Args)]
pub struct BenchLoaderArgs {
    /// A split folder holding instances.json and images/.
    #[arg(long)]
    pub data: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Square sizes, comma separated (one drawn per batch).
    #[arg(long, default_value = "256", value_delimiter = ',')]
    pub sizes: Vec<u32>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Batches to time (after one warm-up batch).
    #[arg(long, default_value_t = 50)]
    pub batches: usize,
    /// Turn augmentation off (evaluation-style loading).
    #[arg(long)]
    pub no_augment: bool,
}

impl BenchLoaderArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self {
            data,
            batch_size,
            sizes,
            workers,
            batches,
            no_augment,
        } = self;
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
        codetr_data::outln!("{r}");
        Ok(())
    }
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
