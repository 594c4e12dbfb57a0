//! `codetr-export`: checkpoint → ONNX (see the library docs for the contract).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use codetr_export::{ExportOptions, default_out, export};

/// Export a codetr checkpoint to one ONNX graph: uint8 NHWC images + original sizes in,
/// labels / scores / boxes out (top-k inside, no NMS, standard opset-17 ops, metadata inside).
#[derive(Parser)]
#[command(name = "codetr-export", version)]
struct Cli {
    /// Checkpoint written by `codetr-train fit` (a step or best/ checkpoint) or `init`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output .onnx path (default: the checkpoint path with .onnx). Written atomically.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Detections per image kept by the in-graph top-k (default: the model's max_detections).
    #[arg(long)]
    max_detections: Option<usize>,
    /// ONNX opset; the graph is written for opset 17 (GridSample with opset-16 semantics).
    #[arg(long, default_value_t = 17)]
    opset: i64,
    /// MSDA sampling in the graph: `grid-sample` (ONNX GridSample, opset-16 semantics) or
    /// `gather` (bilinear spelled out with GatherElements, for runtimes whose GridSample is
    /// missing or wrong, e.g. TensorRT 10.13–11.1).
    #[arg(long, value_enum, default_value_t = MsdaArg::GridSample)]
    msda: MsdaArg,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MsdaArg {
    GridSample,
    Gather,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let opts = ExportOptions {
        out: cli.out.unwrap_or_else(|| default_out(&cli.checkpoint)),
        checkpoint: cli.checkpoint,
        max_detections: cli.max_detections,
        opset: cli.opset,
        msda: match cli.msda {
            MsdaArg::GridSample => codetr_train::model::msda::MsdaLowering::GridSample,
            MsdaArg::Gather => codetr_train::model::msda::MsdaLowering::Gather,
        },
    };
    match export(&opts) {
        Ok(r) => {
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                println!(
                    "{}: {} nodes, {} weights ({} bytes), input {}x{}, top-{}; {} training-only parameters dropped",
                    r.out.display(),
                    r.nodes,
                    r.weights,
                    r.bytes,
                    r.input_size[0],
                    r.input_size[1],
                    r.max_detections,
                    r.dropped_params
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
