//! `codetr-train`: the trainer's command line. One file per group of subcommands, each
//! subcommand an `Args` struct with its `run`.

use std::process::ExitCode;
use std::sync::LazyLock;

use clap::{Parser, Subcommand};

mod data;
mod model;
mod train;

/// `--version`: the crate version and the build's GPU backends, autotune and fusion.
static LONG_VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} ({})",
        env!("CARGO_PKG_VERSION"),
        codetr_core::device::build_summary()
    )
});

#[derive(Parser)]
#[command(
    name = "codetr-train",
    version,
    long_version = LONG_VERSION.as_str(),
    about = "Co-DETR training: data, synthetic datasets, COCO evaluation, the Co-DINO model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a deterministic synthetic COCO dataset (DIR/{train,val}/instances.json + images/).
    Synth(data::SynthArgs),
    /// Validate a COCO dataset with the strict reader and print its statistics.
    Check(data::CheckArgs),
    /// COCO bbox evaluation (pycocotools semantics) of a detections file against ground truth.
    Eval(data::EvalArgs),
    /// Run a checkpoint over a COCO split (the evaluation resize), print its COCO mAP and
    /// optionally write the detections (COCO results json, e.g. for pycocotools).
    Validate(model::ValidateArgs),
    /// Show a model's dimensions and parameter counts per module (from a preset, a TOML
    /// config or a checkpoint).
    Info(model::InfoArgs),
    /// Convert an official Co-DINO checkpoint (.pth of Sense-X/Co-DETR or mmdetection 3.x)
    /// into a codetr checkpoint; any tensor that does not fit is listed (exit 2).
    Import(model::ImportArgs),
    /// Write a randomly initialised checkpoint (useful to test export and serving end to end).
    Init(model::InitArgs),
    /// Detect objects in one image with a checkpoint.
    Predict(model::PredictArgs),
    /// Train Co-DETR (Co-DINO + auxiliary heads) on COCO-format data. Every flag overrides the
    /// TOML; with no file the defaults train `tiny` on data/synth.
    Fit(train::FitArgs),
    /// Draw a run's loss curves and validation mAP into a PNG.
    Plot(train::PlotArgs),
    /// Measure the batching loader's throughput (decode + augment + resize on worker threads).
    BenchLoader(data::BenchLoaderArgs),
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
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

impl Command {
    fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Synth(a) => a.run(),
            Command::Check(a) => a.run(),
            Command::Eval(a) => a.run(),
            Command::Validate(a) => a.run(),
            Command::Info(a) => a.run(),
            Command::Import(a) => a.run(),
            Command::Init(a) => a.run(),
            Command::Predict(a) => a.run(),
            Command::Fit(a) => a.run(),
            Command::Plot(a) => a.run(),
            Command::BenchLoader(a) => a.run(),
        }
    }
}
