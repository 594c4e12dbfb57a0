//! `codetr-export`: checkpoint → ONNX (see the library docs for the contract).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use codetr_export::{ExportOptions, default_out, export};
use codetr_model::{Msda, Resize};

/// Export a codetr checkpoint to one ONNX graph: uint8 NHWC images + original sizes in,
/// labels / scores / boxes out (top-k inside, no NMS, standard opset-17 ops, metadata inside).
#[derive(Parser)]
#[command(name = "codetr-export", version)]
struct Cli {
    /// Checkpoint written by `codetr-train fit` (a step or best/ checkpoint) or `init`, or an
    /// official Co-DINO PyTorch checkpoint (`.pth` of Sense-X/Co-DETR or mmdetection 3.x,
    /// recognised by its content): its tensors are mapped onto the detector of --model-config
    /// and the auxiliary heads are dropped; an unknown, missing or mis-shaped tensor is an
    /// error that lists them (exit 2, nothing written). The file is parsed, never unpickled.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Model config (TOML, e.g. `preset = "paper-r50"` plus overrides) describing an official
    /// checkpoint's architecture; the class count is read from the file. Default: the
    /// `paper-r50` preset (Co-DINO 5-scale R50), or `paper-swin-l` (Co-DINO 5-scale Swin-L)
    /// when the checkpoint's backbone is a Swin Transformer. Not used with our own checkpoints.
    #[arg(long)]
    model_config: Option<PathBuf>,
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
    /// `gather` (bilinear spelled out with GatherND row lookups, for runtimes whose GridSample is
    /// missing or wrong, e.g. TensorRT 10.13–11.1).
    #[arg(long, default_value = "grid-sample", value_parser = msda_parser())]
    msda: Msda,
    /// Leave the input height and width symbolic (`images` `[N, H, W, 3]`): every shape in the
    /// graph is then derived from `Shape` ops (no ScatterND into shapes, which TensorRT
    /// refuses), and position tables, reference points and proposals are computed in the graph.
    /// The metadata's `codetr.input_size` is null. `--check` then also runs two other sizes.
    #[arg(long)]
    dynamic_size: bool,
    /// How the server brings images to the input size: `stretch` (both sides to the input
    /// size; our own models are trained so) or `letterbox` (keep the aspect ratio to fit,
    /// image top-left, pad: the official Co-DINO test pipeline). A letterbox graph takes a
    /// third input `valid_sizes` `[N, 2]` and masks the padding as the official model does
    /// (position encoding, valid ratios, attention values, proposals); its metadata is format
    /// version 2, which servers older than this one refuse.
    #[arg(long, default_value = "stretch", value_parser = resize_parser())]
    resize: Resize,
    /// With `--resize letterbox`: cap the keep-ratio scale at SHORT,LONG (short side ≤ SHORT,
    /// long side ≤ LONG, as mmcv's `Resize(scale=(LONG, SHORT), keep_ratio=True)`). The
    /// official Co-DINO test pipeline is `800,1333`; give the model a canvas of at least LONG
    /// (`input_size = 1333` in --model-config) for its exact scale in both orientations.
    /// Written to the metadata (format version 3): the server letterboxes with it.
    #[arg(long, value_delimiter = ',', num_args = 1, value_name = "SHORT,LONG")]
    letterbox_limits: Option<Vec<u32>>,
    /// Fix the graph's input at HEIGHTxWIDTH instead of the model's square input size, e.g.
    /// `800x1333` (the official landscape canvas: with `--letterbox-limits 800,1333` exact for
    /// landscape images, portrait ones scaled down to fit, at 60 % of a 1333² graph's pixels).
    /// Not with --dynamic-size.
    #[arg(long, value_name = "HEIGHTxWIDTH", value_parser = codetr_model::preprocess::parse_hw)]
    input_size: Option<[u32; 2]>,
    /// With --dynamic-size: the input sizes (comma-separated HEIGHTxWIDTH) the graph will be
    /// served at; the export infers the largest batch whose every tensor stays under 2^31
    /// elements at each and writes them to the metadata (`codetr.max_batch_at`, format version
    /// 4), so the server never runs a larger batch there (on CUDA one fails and leaves the GPU
    /// context unusable). [default: with --letterbox-limits SHORT,LONG: SHORTxLONG,LONGxSHORT,
    /// the official landscape and portrait canvases, and the same rounded up to the model's
    /// coarsest stride (e.g. 832x1344,1344x832), which keep the padding mask aligned and which
    /// codetr-serve recommends; otherwise none]
    #[arg(long, value_name = "HxW,...", value_parser = codetr_model::preprocess::parse_hw, value_delimiter = ',')]
    bound_sizes: Vec<[u32; 2]>,
    /// After writing, run the graph in ONNX Runtime (CPU) and the Burn model on the same real
    /// images at several batch sizes; exit 1 if scores or boxes (÷ image side) differ by more
    /// than 1e-4 or any label differs. Where they differ, the batch runs again with Burn given
    /// the graph's own query selection (read from the graph through an extra output): it
    /// still passes when the graph's choice is one Burn's scores allow (each rank's score
    /// within 1e-5: near-tied proposals in another order, as untrained weights give) and
    /// everything downstream then agrees within 1e-4; both results are reported.
    #[arg(long)]
    check: bool,
    /// Weights and compute in fp16, written into the graph (for TensorRT 11's strongly typed
    /// networks); MSDA sampling positions/softmax/sampling and the postprocess stay fp32, the
    /// graph's inputs and outputs keep their types. `--check` then passes on the COCO AP
    /// difference (|ΔAP| ≤ 0.005 on --check-map images) instead of the 1e-4 element bound.
    #[arg(long)]
    fp16: bool,
    /// `--check` also compares the COCO AP of the graph (ONNX Runtime) and of the Burn model on
    /// this many images of --check-data (0 = skip; an fp16 export uses 100 when 0).
    #[arg(long, default_value_t = 0)]
    check_map: usize,
    /// COCO split (DIR/instances.json + images/) whose first images `--check` uses. Default:
    /// images generated on the fly by the synthetic generator with a fixed seed (the same on
    /// every machine; nothing needs to exist on disk).
    #[arg(long)]
    check_data: Option<PathBuf>,
    /// Batch sizes `--check` runs, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    check_batches: Vec<usize>,
    /// ONNX Runtime shared library for `--check` (default: ORT_DYLIB_PATH, then
    /// .ort/cpu/libonnxruntime.so from scripts/install-ort.sh).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// The batch size the graph will be served at (codetr-serve's --max-batch-size): the
    /// export infers every tensor's shape at it and warns, naming the largest batch that
    /// fits, when a tensor reaches 2^31 elements (CUDA kernels index with 32 bits and fail).
    #[arg(long, default_value_t = 8)]
    serve_batch: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `HxW: E elements per image (Op [shape]); batches up to N`: one shape bound, as reported.
fn describe_bound(b: &codetr_export::shapes::Bound) -> String {
    format!(
        "{}x{}: {} elements per image ({} {:?}); batches up to {}",
        b.input_size[0],
        b.input_size[1],
        b.at_batch_1.elements,
        b.at_batch_1.op,
        b.at_batch_1.shape,
        b.max_batch
    )
}

/// `--resize`: the contract's own names (`codetr_model::Resize`), listed in `--help`.
fn resize_parser() -> impl clap::builder::TypedValueParser<Value = Resize> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Resize::ALL.iter().map(|m| m.as_str()))
        .try_map(|s| s.parse::<Resize>())
}

/// `--msda`: the contract's own names (`codetr_model::Msda`), listed in `--help`.
fn msda_parser() -> impl clap::builder::TypedValueParser<Value = Msda> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Msda::ALL.iter().map(|m| m.as_str()))
        .try_map(|s| s.parse::<Msda>())
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
    let letterbox_limits = match cli.resize.limits_from(cli.letterbox_limits.as_deref()) {
        Ok(l) => l,
        Err(m) => {
            eprintln!("error: invalid option: {m}");
            return ExitCode::from(2);
        }
    };
    let opts = ExportOptions {
        out: cli.out.unwrap_or_else(|| default_out(&cli.checkpoint)),
        checkpoint: cli.checkpoint,
        max_detections: cli.max_detections,
        opset: cli.opset,
        msda: cli.msda,
        fp16: cli.fp16,
        dynamic_size: cli.dynamic_size,
        serve_batch: cli.serve_batch,
        model_config: cli.model_config.clone(),
        resize: cli.resize,
        letterbox_limits,
        input_size: cli.input_size,
        bound_sizes: cli.bound_sizes.clone(),
    };
    if let Some(Err(e)) = cli
        .check_data
        .as_deref()
        .filter(|_| cli.check)
        .map(codetr_export::check::validate_check_data)
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let report = match export(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            // An official checkpoint that does not fit is the user's input, like a bad flag.
            let bad_input = matches!(
                e,
                codetr_export::ExportError::Core(codetr_core::Error::Import { .. })
                    | codetr_export::ExportError::Option(_)
            );
            return ExitCode::from(if bad_input { 2 } else { 1 });
        }
    };
    if cli.json {
        codetr_data::outln!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        codetr_data::outln!(
            "{}: {} nodes, {} weights ({} bytes), input {}, top-{}; {} training-only parameters dropped",
            report.out.display(),
            report.nodes,
            report.weights,
            report.bytes,
            report
                .input_size
                .map_or("HxW (dynamic)".to_string(), |[h, w]| format!("{h}x{w}")),
            report.max_detections,
            report.dropped_params
        );
        if let Some(imp) = &report.import {
            for line in imp.summary() {
                codetr_data::outln!("imported {line}");
            }
        }
        codetr_data::outln!(
            "largest intermediate at {} keep every tensor under 2^31 elements",
            describe_bound(&report.intermediate)
        );
        for b in &report.bounds_at {
            codetr_data::outln!("at {} (written to codetr.max_batch_at)", describe_bound(b));
        }
    }
    if !cli.check {
        return ExitCode::SUCCESS;
    }
    let map_images = if cli.check_map == 0 && cli.fp16 {
        100
    } else {
        cli.check_map
    };
    // Held until the checks are done: the generated images live in it.
    let generated;
    let check_data = match &cli.check_data {
        Some(d) => d.clone(),
        None => {
            let most = cli.check_batches.iter().copied().max().unwrap_or(1);
            match codetr_export::check::synthetic_check_data(most.max(map_images)) {
                Ok(dir) => {
                    generated = dir;
                    generated.path().join("val")
                }
                Err(e) => {
                    eprintln!("error: check: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    };
    let result = codetr_export::check::find_ort(cli.ort_lib.as_deref()).and_then(|lib| {
        codetr_export::check::check(
            &report.out,
            &opts.checkpoint,
            opts.model_config.as_deref(),
            &check_data,
            &cli.check_batches,
            &lib,
        )
    });
    let map = if map_images > 0 {
        match codetr_export::check::find_ort(cli.ort_lib.as_deref()).and_then(|lib| {
            codetr_export::check::map_compare(
                &report.out,
                &opts.checkpoint,
                opts.model_config.as_deref(),
                &check_data,
                map_images,
                &lib,
            )
        }) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("error: check: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    match result {
        Ok(c) => {
            // fp16 rounding reorders near-equal scores, so element-wise parity is reported but
            // the verdict is the AP difference. In fp32 the verdict is the 1e-4 parity; a
            // 1e-6 score difference can still swap two near-equal detections and move AP in
            // the 6th digit, so the AP bound there is only a gross-error guard.
            let passed = match (&map, cli.fp16) {
                (Some(m), true) => m.delta_ap.abs() <= 0.005,
                (Some(m), false) => c.passed && m.delta_ap.abs() <= 1e-3,
                (None, _) => c.passed,
            };
            if cli.json {
                codetr_data::outln!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"parity": c, "map": map, "passed": passed})
                    )
                    .unwrap_or_default()
                );
            } else {
                codetr_data::outln!(
                    "check (ONNX Runtime vs Burn, batches {:?}, sizes {:?}, {} images): scores {:.2e}, boxes/side {:.2e}, labels identical: {}",
                    c.batches,
                    c.sizes,
                    c.images,
                    c.max_score_diff,
                    c.max_box_diff,
                    c.labels_identical,
                );
                if let Some(m) = &map {
                    codetr_data::outln!(
                        "check COCO AP on {} images: Burn fp32 {:.4} (AP50 {:.4}), graph {:.4} (AP50 {:.4}), delta {:+.2e}",
                        m.images,
                        m.ap_burn,
                        m.ap50_burn,
                        m.ap_onnx,
                        m.ap50_onnx,
                        m.delta_ap
                    );
                }
                if let Some(gap) = c.selection_min_gap {
                    codetr_data::outln!(
                        "{}",
                        codetr_export::check::describe_selection(gap, c.given_selection.as_ref())
                    );
                }
                codetr_data::outln!("check: {}", if passed { "PASS" } else { "FAIL" });
            }
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: check: {e}");
            ExitCode::from(1)
        }
    }
}
