//! Where two providers part on one graph (issue 21: CPU↔CUDA scores drifted by 1.15e-2 with
//! TF32 off, while two CPU lowerings of the same model agree to 3.5e-6,
//! bench/results/parity_floor.json), or two graphs of one model (`--model-b`: the `--fp16`
//! rewrite against the fp32 graph, on one provider or two): runs the same real images through
//! provider A (the reference) and provider B with the server's session setup
//! ([`engine::open`]), first the graphs as served, then with every node's output exposed
//! ([`codetr_serve::drift`]), and reports which nodes add the drift. Tensors are matched by
//! name; the attribution follows graph A's nodes.
//!
//! `cargo bench -p codetr-serve --bench drift -- --model M.onnx [--model-b M16.onnx]
//!  --images FILE|DIR[,...] [--count 8] [--a cpu] [--b cuda] [--config-a serve.toml]
//!  [--config-b serve.toml] [--b-tf32 true|false] [--ops Conv,GridSample] [--top 15]
//!  [--json out.json]`.
//! Needs ORT_DYLIB_PATH (and a `--features gpu` build for a GPU provider).
//!
//! Exposing every output keeps ONNX Runtime from fusing across them, so the exposed graph's
//! own final difference is reported next to the served graph's: when they are alike, the
//! per-node ranking explains the served drift.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use codetr_serve::config::{Provider, RuntimeConfig};
use codetr_serve::drift::{self, TensorDiff, Values};
use codetr_serve::{decode, engine};
use ort::session::Session;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn runtime(config: Option<String>, provider: &str) -> anyhow::Result<RuntimeConfig> {
    let mut rt = match config {
        Some(p) => {
            let cfg: codetr_serve::config::ServeConfig =
                toml::from_str(&std::fs::read_to_string(&p)?)?;
            cfg.runtime
        }
        None => RuntimeConfig::default(),
    };
    rt.providers = vec![
        <Provider as clap::ValueEnum>::from_str(provider, true)
            .map_err(|e| anyhow::anyhow!("provider {provider}: {e}"))?,
    ];
    Ok(rt)
}

/// The batch as the server builds it: the images named by `spec` (comma-separated files, or
/// directories whose .jpg/.png files count in name order), the first `count`, through the
/// server's own decode and resize to the graph's first input size (stretch, or letterbox with
/// its valid sizes). Returns the pixels, the original sizes and the valid sizes (`[N, 2]`
/// each; the graph takes the last only when it letterboxes).
fn batch(spec: &str, count: usize, info: &engine::ModelInfo) -> anyhow::Result<Batch> {
    let mut files: Vec<PathBuf> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(part);
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(&p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| matches!(x.to_str(), Some("jpg" | "jpeg" | "png")))
                })
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(p);
        }
    }
    files.truncate(count);
    anyhow::ensure!(!files.is_empty(), "{spec}: no .jpg/.png images");
    let [h, w] = info.input_sizes[0];
    let mut resizer = fast_image_resize::Resizer::new();
    let mut b = Batch::default();
    for f in &files {
        let img = decode::decode(&std::fs::read(f)?, u64::MAX)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let (pixels, valid) = decode::resize(
            &img,
            w,
            h,
            info.meta.resize,
            info.meta.letterbox_limits,
            &mut resizer,
        )?;
        b.pixels.extend(pixels);
        b.orig.extend([i64::from(img.height), i64::from(img.width)]);
        b.valid.extend(valid.map(i64::from));
    }
    Ok(b)
}

#[derive(Default)]
struct Batch {
    pixels: Vec<u8>,
    orig: Vec<i64>,
    valid: Vec<i64>,
}

/// The contract's outputs compared as the serving parity does: scores by rank (each image's
/// are sorted), labels that differ, box coordinates.
fn final_diff(a: &HashMap<String, Values>, b: &HashMap<String, Values>) -> serde_json::Value {
    let d = |name: &str| match (a.get(name), b.get(name)) {
        (Some(x), Some(y)) => drift::diff(x, y),
        _ => None,
    };
    let (s, l, bx) = (
        d(codetr_model::OUTPUT_SCORES),
        d(codetr_model::OUTPUT_LABELS),
        d(codetr_model::OUTPUT_BOXES),
    );
    serde_json::json!({
        "max_score_diff_by_rank": s.map(|x| x.max_abs),
        "labels_differing": l.map(|x| x.max_abs),
        "max_box_diff_px": bx.map(|x| x.max_abs),
    })
}

fn open(
    env: &'static ort::environment::Environment,
    path: &Path,
    rt: &RuntimeConfig,
) -> anyhow::Result<Session> {
    let (s, p, failures) = engine::open(env, path, rt, &[1], None)?;
    for f in failures {
        eprintln!(
            "drift: provider {} did not take: {}",
            f.provider.as_str(),
            f.error
        );
    }
    eprintln!("drift: {} on {}", path.display(), p.as_str());
    Ok(s)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; without --model there is nothing to compare.
    let Some(model) = arg(&args, "--model").map(PathBuf::from) else {
        eprintln!("drift: pass --model PATH --images DIR (see bench/gpu_serve.sh); nothing run");
        return Ok(());
    };
    let images = arg(&args, "--images").ok_or_else(|| anyhow::anyhow!("--images FILE|DIR,..."))?;
    let count: usize = arg(&args, "--count").map_or(Ok(8), |s| s.parse())?;
    let top: usize = arg(&args, "--top").map_or(Ok(15), |s| s.parse())?;
    let ops: Vec<String> = arg(&args, "--ops")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_default();
    let (pa, pb) = (
        arg(&args, "--a").unwrap_or_else(|| "cpu".into()),
        arg(&args, "--b").unwrap_or_else(|| "cuda".into()),
    );
    let rt_a = runtime(arg(&args, "--config-a"), &pa)?;
    let mut rt_b = runtime(arg(&args, "--config-b"), &pb)?;
    if let Some(t) = arg(&args, "--b-tf32") {
        rt_b.cuda_tf32 = t.parse()?;
    }

    let env = engine::environment(None)?;
    let bytes = std::fs::read(&model)?;
    let (nodes, graph_outputs) = drift::read_graph(&bytes)?;
    let names = drift::exposable(&nodes, &graph_outputs, &ops);
    let exposed = tempfile::Builder::new().suffix(".onnx").tempfile()?;
    std::fs::write(exposed.path(), drift::with_outputs(&bytes, &names)?)?;
    drop(bytes);
    // Graph B: the same graph, or another export of the model whose tensors keep their names
    // (the fp16 rewrite adds Casts under new names); only the names both produce are compared.
    let model_b = arg(&args, "--model-b").map_or_else(|| model.clone(), PathBuf::from);
    let exposed_b = if model_b == model {
        None
    } else {
        let bytes_b = std::fs::read(&model_b)?;
        let (nodes_b, outputs_b) = drift::read_graph(&bytes_b)?;
        anyhow::ensure!(
            outputs_b == graph_outputs,
            "{} has outputs {outputs_b:?}, {} has {graph_outputs:?}: not two exports of one contract",
            model_b.display(),
            model.display()
        );
        let made: std::collections::HashSet<&String> =
            nodes_b.iter().flat_map(|n| n.outputs.iter()).collect();
        let shared: Vec<String> = names.iter().filter(|n| made.contains(n)).cloned().collect();
        eprintln!(
            "drift: {} of graph A's {} node outputs are also made by graph B",
            shared.len(),
            names.len()
        );
        let f = tempfile::Builder::new().suffix(".onnx").tempfile()?;
        std::fs::write(f.path(), drift::with_outputs(&bytes_b, &shared)?)?;
        Some(f)
    };
    let exposed_b_path = exposed_b.as_ref().map_or(exposed.path(), |f| f.path());

    let mut a = open(env, &model, &rt_a)?;
    let info = engine::inspect(&a, &model, &[])?;
    let hw = info.input_sizes[0];
    let input = batch(&images, count, &info)?;
    let valid = (info.meta.resize == codetr_model::Resize::Letterbox).then_some(&input.valid[..]);
    let contract: Vec<String> = graph_outputs.clone();

    // The graph as served.
    let served_a = drift::run(&mut a, &input.pixels, &input.orig, valid, hw, &contract)?;
    drop(a);
    let mut b = open(env, &model_b, &rt_b)?;
    let served_b = drift::run(&mut b, &input.pixels, &input.orig, valid, hw, &contract)?;
    drop(b);

    // Every node's output.
    let all: Vec<String> = contract.iter().chain(&names).cloned().collect();
    let mut ea = open(env, exposed.path(), &rt_a)?;
    let out_a = drift::run(&mut ea, &input.pixels, &input.orig, valid, hw, &all)?;
    drop(ea);
    let mut eb = open(env, exposed_b_path, &rt_b)?;
    let out_b = drift::run(&mut eb, &input.pixels, &input.orig, valid, hw, &all)?;
    drop(eb);

    let mut diffs: HashMap<String, TensorDiff> = HashMap::new();
    let mut skipped: HashMap<String, usize> = HashMap::new();
    for name in &all {
        match (out_a.get(name), out_b.get(name)) {
            (Some(x), Some(y)) => match drift::diff(x, y) {
                Some(d) => {
                    diffs.insert(name.clone(), d);
                }
                None => {
                    *skipped
                        .entry(format!("{x:?}").chars().take(40).collect())
                        .or_default() += 1
                }
            },
            _ => *skipped.entry("missing".into()).or_default() += 1,
        }
    }
    let per_node = drift::attribute(&nodes, &diffs);
    let first_over: serde_json::Map<String, serde_json::Value> = [1e-6, 1e-5, 1e-4, 1e-3]
        .iter()
        .map(|&t| {
            let n = per_node.iter().find(|n| n.rel > t);
            (
                format!("{t:e}"),
                n.map_or(serde_json::Value::Null, |n| {
                    serde_json::json!({"index": n.index, "name": n.name, "op_type": n.op_type, "rel": n.rel})
                }),
            )
        })
        .collect();
    // A top-k whose indices differ between the runs made a discrete choice differently (e.g.
    // the two-stage query selection among near-tied proposals): everything after it differs
    // by more than float error, whatever the provider's precision.
    let topk_flips: Vec<serde_json::Value> = nodes
        .iter()
        .filter(|n| n.op_type == "TopK")
        .filter_map(|n| {
            let idx = n.outputs.get(1)?;
            let d = diffs.get(idx)?;
            let values_rel = n.outputs.first().and_then(|v| diffs.get(v)).map(|d| d.rel);
            Some(
                serde_json::json!({"name": n.name, "indices_differing": d.max_abs,
                                    "values_rel": values_rel}),
            )
        })
        .collect();
    let mut ranked: Vec<&drift::NodeDrift> = per_node.iter().filter(|n| n.rel > 1e-6).collect();
    ranked.sort_by(|x, y| y.gain.total_cmp(&x.gain));
    let mut by_op: HashMap<String, (usize, f64, f64)> = HashMap::new();
    for n in &per_node {
        let e = by_op.entry(n.op_type.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.max(n.rel);
        e.2 = e.2.max(if n.rel > 1e-6 { n.gain } else { 0.0 });
    }
    let mut by_op: Vec<_> = by_op.into_iter().collect();
    by_op.sort_by(|x, y| y.1.2.total_cmp(&x.1.2));
    let report = serde_json::json!({
        "model": model, "model_b": model_b, "images": input.orig.len() / 2, "input": hw,
        "a": {"provider": pa, "cuda_tf32": rt_a.cuda_tf32},
        "b": {"provider": pb, "cuda_tf32": rt_b.cuda_tf32, "cuda_conv_algo": rt_b.cuda_conv_algo,
              "cuda_prefer_nhwc": rt_b.cuda_prefer_nhwc},
        "served_graph": final_diff(&served_a, &served_b),
        "exposed_graph": final_diff(&out_a, &out_b),
        "compared_tensors": diffs.len(), "not_compared": skipped,
        "first_node_over": first_over,
        "topk": topk_flips,
        "top_gain": ranked.iter().take(top).collect::<Vec<_>>(),
        "by_op": by_op.iter().map(|(op, (n, rel, gain))| serde_json::json!({"op_type": op, "nodes": n, "max_rel": rel, "max_gain": gain})).collect::<Vec<_>>(),
        "nodes": per_node,
    });
    eprintln!(
        "drift {pa} → {pb}{}: served {}, exposed {}; first node over 1e-5: {}",
        if model_b == model {
            String::new()
        } else {
            format!(" ({})", model_b.display())
        },
        report["served_graph"],
        report["exposed_graph"],
        report["first_node_over"]["1e-5"]
    );
    for n in ranked.iter().take(top) {
        eprintln!(
            "  {:>5} {:<20} {:<40} rel {:.2e} (inputs {:.2e}) gain {:.1}",
            n.index, n.op_type, n.name, n.rel, n.input_rel, n.gain
        );
    }
    match arg(&args, "--json") {
        Some(p) => std::fs::write(&p, serde_json::to_vec_pretty(&report)?)?,
        None => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}
