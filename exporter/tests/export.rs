//! `codetr-export` end to end: random-init `tiny` and `paper-r50` (small input) checkpoints
//! and a K=2 training checkpoint → ONNX that passes `onnx.checker`, runs in ONNX Runtime at
//! batch 1 and 3 and matches the Burn model to 1e-4; metadata complete; byte-identical
//! re-export; clear errors and no output file on bad input. Needs `CODETR_PYTHON`.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::Device;
use codetr_core::model::detector::pixels_to_tensor;
use codetr_core::model::{DetectorConfig, checkpoint};
use codetr_export::check::{Dets, compare_ranked};
use codetr_export::{ExportOptions, export};
use codetr_model::Msda;

mod common;
use common::{init_checkpoint, python, python_json};

fn run_onnx(model: &Path, n: usize, s: usize, px: &[u8], sizes: &[i64]) -> serde_json::Value {
    run_onnx_hw(model, n, s, s, px, sizes)
}

/// `onnx_run.py` (full checker, strict inference, ORT CPU) on `n` images of `h × w`.
fn run_onnx_hw(
    model: &Path,
    n: usize,
    h: usize,
    w: usize,
    px: &[u8],
    sizes: &[i64],
) -> serde_json::Value {
    onnx_run_json(model, &feeds(n, h, w, px, sizes))
}

/// `onnx_run.py` on several batches of `s × s` images (`(n, pixels, orig_sizes)`) through
/// one session: `res["runs"][i]` holds batch `i`'s outputs.
fn run_onnx_batches(
    model: &Path,
    s: usize,
    batches: &[(usize, Vec<u8>, Vec<i64>)],
) -> serde_json::Value {
    let inputs: Vec<serde_json::Value> = batches
        .iter()
        .map(|(n, px, sizes)| feeds(*n, s, s, px, sizes))
        .collect();
    onnx_run_json(model, &serde_json::Value::from(inputs))
}

/// The graph's inputs for `n` images of `h × w` in `onnx_run.py`'s JSON.
fn feeds(n: usize, h: usize, w: usize, px: &[u8], sizes: &[i64]) -> serde_json::Value {
    serde_json::json!({
        "images": {"dtype": "uint8", "shape": [n, h, w, 3], "data": px},
        "orig_sizes": {"dtype": "int64", "shape": [n, 2], "data": sizes},
    })
}

/// `onnx_run.py` on `inputs` (one input set, or a list of them).
fn onnx_run_json(model: &Path, inputs: &serde_json::Value) -> serde_json::Value {
    // The inputs go to a temp dir: the model may be a committed file (models/).
    let tmp = tempfile::tempdir().unwrap();
    let ip = tmp.path().join("in.json");
    std::fs::write(&ip, inputs.to_string()).unwrap();
    python_json("onnx_run.py", &[model.as_os_str(), ip.as_os_str()])
}

/// A synthetic dataset under `dir/data` with `val` 160×120 val images, and a `tiny` config at
/// 128² with 50 queries: what the `--check` tests export and compare on.
fn small_val_set_and_model(dir: &Path, val: usize, seed: u64) -> (PathBuf, DetectorConfig) {
    use codetr_data::synth::{self, SynthConfig};
    let data = dir.join("data");
    synth::generate(
        &data,
        &SynthConfig {
            train: 1,
            val,
            test: 0,
            seed,
            width: 160,
            height: 120,
        },
        None,
    )
    .unwrap();
    let mut cfg = DetectorConfig::tiny();
    cfg.input_size = 128;
    cfg.transformer.num_queries = 50;
    cfg.max_detections = 50;
    (data, cfg)
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Exports `ckpt`, then compares ORT and Burn at batch 1 and 3; returns the max diffs.
fn export_and_compare(ckpt: &Path, out: &Path, msda: Msda) -> (f32, f32) {
    let report = export(&ExportOptions {
        msda,
        ..ExportOptions::new(ckpt, out)
    })
    .unwrap();
    let (model, _) = checkpoint::load(ckpt, &Device::flex()).unwrap();
    let s = model.config().input_size as usize;
    let (mut ds, mut db) = (0f32, 0f32);
    let sizes =
        |n: usize| -> Vec<[u32; 2]> { (0..n).map(|i| [300 + 50 * i as u32, 400]).collect() };
    let batches: Vec<(usize, Vec<u8>, Vec<i64>)> = [1usize, 3]
        .into_iter()
        .map(|n| {
            let px: Vec<u8> = (0..n * s * s * 3)
                .map(|i| ((i * 17 + n) % 256) as u8)
                .collect();
            let flat: Vec<i64> = sizes(n)
                .iter()
                .flat_map(|v| [i64::from(v[0]), i64::from(v[1])])
                .collect();
            (n, px, flat)
        })
        .collect();
    let res = run_onnx_batches(out, s, &batches);
    assert_eq!(res["runs"].as_array().map(Vec::len), Some(batches.len()));
    for (b, (n, px, _)) in batches.iter().enumerate() {
        let n = *n;
        let x = pixels_to_tensor(px, n, s, s, &Device::flex()).unwrap();
        let (scores, labels, boxes) = model.detect(x, &sizes(n)).unwrap().to_host().unwrap();
        let o = &res["runs"][b];
        let got_labels: Vec<i64> = o["labels"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        // Detections whose scores tie may come in either order (the exporter's own rule).
        let burn = Dets {
            scores,
            labels,
            boxes,
        };
        let graph = Dets {
            scores: floats(&o["scores"]),
            labels: got_labels,
            boxes: floats(&o["boxes"]),
        };
        let d = compare_ranked(burn.scores.len() / n, 400.0, &burn, &graph);
        assert!(d.labels_identical, "labels differ at batch {n}: {d:?}");
        ds = ds.max(d.max_score_diff);
        db = db.max(d.max_box_diff);
    }
    let meta = &res["metadata"];
    for key in codetr_model::METADATA_KEYS {
        assert!(meta.get(*key).is_some(), "metadata {key} missing");
    }
    assert_eq!(res["domains"], serde_json::json!([""]), "standard ops only");
    assert!(
        !res["ops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "NonMaxSuppression")
    );
    eprintln!(
        "{} ({msda:?}): {} nodes, {} weights, dropped {}: scores {ds:.2e}, boxes/side {db:.2e}",
        ckpt.display(),
        report.nodes,
        report.weights,
        report.dropped_params
    );
    (ds, db)
}

#[test]
fn tiny_export_matches_burn_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("tiny.ckpt");
    init_checkpoint(&DetectorConfig::tiny(), &ckpt, 3);
    let out = dir.path().join("tiny.onnx");
    let (ds, db) = export_and_compare(&ckpt, &out, Msda::GridSample);
    assert!(ds <= 1e-4 && db <= 1e-4, "{ds} {db}");
    let gathered = dir.path().join("tiny-gather.onnx");
    let (ds, db) = export_and_compare(&ckpt, &gathered, Msda::Gather);
    assert!(ds <= 1e-4 && db <= 1e-4, "gather lowering: {ds} {db}");
    let first = std::fs::read(&out).unwrap();
    let again = dir.path().join("again.onnx");
    export(&ExportOptions::new(&ckpt, &again)).unwrap();
    assert!(
        first == std::fs::read(&again).unwrap(),
        "export is not byte-identical"
    );
}

#[test]
fn paper_r50_small_input_matches_burn() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("r50.ckpt");
    let mut cfg = DetectorConfig::paper_r50();
    cfg.input_size = 128;
    cfg.num_classes = 5;
    cfg.transformer.num_queries = 100;
    cfg.max_detections = 50;
    init_checkpoint(&cfg, &ckpt, 4);
    for msda in [Msda::GridSample, Msda::Gather] {
        let (ds, db) = export_and_compare(&ckpt, &dir.path().join("r50.onnx"), msda);
        assert!(ds <= 1e-4 && db <= 1e-4, "{msda:?}: {ds} {db}");
    }
}

#[test]
fn bad_inputs_are_clear_errors_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let opts = |ckpt: PathBuf, out: PathBuf, k: Option<usize>, opset: i64| ExportOptions {
        max_detections: k,
        opset,
        ..ExportOptions::new(&ckpt, &out)
    };
    // missing and corrupt checkpoints
    let e = export(&opts(dir.path().join("none.ckpt"), out.clone(), None, 17)).unwrap_err();
    assert!(e.to_string().contains("none.ckpt"), "{e}");
    let bad = dir.path().join("bad.ckpt");
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    let e = export(&opts(bad, out.clone(), None, 17)).unwrap_err();
    assert!(e.to_string().contains("magic"), "{e}");
    // bad flags and unwritable destination
    let ckpt = dir.path().join("t.ckpt");
    let mut cfg = DetectorConfig::tiny();
    cfg.input_size = 128;
    cfg.transformer.num_queries = 50;
    cfg.max_detections = 50;
    init_checkpoint(&cfg, &ckpt, 1);
    assert!(export(&opts(ckpt.clone(), out.clone(), Some(0), 17)).is_err());
    assert!(export(&opts(ckpt.clone(), out.clone(), None, 20)).is_err());
    let e = export(&opts(ckpt, dir.path().join("no/such/dir/m.onnx"), None, 17)).unwrap_err();
    assert!(!e.to_string().is_empty());
    assert!(!out.exists(), "no partial output");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn training_checkpoint_exports_without_its_aux_heads() {
    use codetr_data::synth::{self, SynthConfig};
    use codetr_train::train::config::FitConfig;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth::generate(
        &data,
        &SynthConfig {
            train: 4,
            val: 2,
            test: 0,
            seed: 1,
            width: 128,
            height: 128,
        },
        None,
    )
    .unwrap();
    let mut cfg = FitConfig::from_toml(
        "[model]\npreset = \"tiny\"\ninput_size = 128\n[model.transformer]\nd_model = 64\nffn_dim = 128\nencoder_layers = 1\ndecoder_layers = 2\nnum_queries = 20\n[schedule]\nbatch_size = 2\nsizes = [128]\nsteps = 1\n[co]\nk = 2\n[co.rpn]\npre_nms = 200\npost_nms = 50\n[co.roi]\nsamples = 32\nfc_dim = 32\n",
    )
    .unwrap();
    cfg.data.train = data.join("train");
    cfg.data.val = data.join("val");
    cfg.run.out = dir.path().join("run");
    cfg.run.workers = 1;
    codetr_train::train::fit::fit(cfg.clone(), false, false).unwrap();
    let ckpt = dir.path().join("run/checkpoints/step-00000001.ckpt");
    let out = dir.path().join("m.onnx");
    let r = export(&ExportOptions::new(&ckpt, &out)).unwrap();
    // counted from the checkpoint's tensor table = the training heads the run config builds
    let (header, _) = codetr_core::model::checkpoint::read(&ckpt).unwrap();
    let heads = codetr_train::train::codetr::TrainHeads::new(
        &header.config,
        cfg.co.k,
        &cfg.co,
        &burn::tensor::Device::flex(),
    )
    .unwrap();
    use burn::module::Module;
    assert_eq!(r.dropped_params, heads.num_params());
    assert!(r.dropped_params > 10_000, "{}", r.dropped_params);
    let (ds, db) = export_and_compare(&ckpt, &out, Msda::GridSample);
    assert!(ds <= 1e-4 && db <= 1e-4);
}

/// The ONNX Runtime library of the Python wheel in CODETR_PYTHON's environment (or
/// ORT_DYLIB_PATH): the same provisioning as the server.
fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let out = Command::new(python())
        .args([
            "-c",
            "import glob, os, onnxruntime; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*'))[0])",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn check_runs_onnx_runtime_from_rust_and_catches_a_wrong_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = small_val_set_and_model(dir.path(), 3, 2);
    let (a, b) = (dir.path().join("a.ckpt"), dir.path().join("b.ckpt"));
    init_checkpoint(&cfg, &a, 1);
    init_checkpoint(&cfg, &b, 2);
    let out = dir.path().join("a.onnx");
    let opts = ExportOptions::new(&a, &out);
    export(&opts).unwrap();
    let lib = ort_library();
    let val = data.join("val");
    let ok = codetr_export::check::check(&out, &a, None, &val, &[1, 3], &lib).unwrap();
    eprintln!("{ok:?}");
    assert!(ok.passed && ok.labels_identical && ok.max_score_diff <= 1e-4);
    // an exact pass needs no second run on the graph's selection
    assert!(ok.given_selection.is_none() && ok.selection_min_gap.is_none());
    // the graph of checkpoint a checked against checkpoint b must fail, and Burn decoding
    // the graph's own selection must not rescue it: b's scores do not allow a's selection
    let bad = codetr_export::check::check(&out, &b, None, &val, &[1], &lib).unwrap();
    assert!(!bad.passed, "{bad:?}");
    let g = bad
        .given_selection
        .as_ref()
        .expect("the graph names its selection");
    assert!(!g.passed && g.slots == cfg.transformer.num_queries, "{g:?}");
    assert!(
        g.max_rank_score_diff > 1e-3 && g.exposed_vs_graph == 0.0,
        "{g:?}"
    );
    // and the binary: --check exits 0 on a good export
    let st = Command::new(env!("CARGO_BIN_EXE_codetr-export"))
        .arg("--checkpoint")
        .arg(&a)
        .arg("--out")
        .arg(dir.path().join("cli.onnx"))
        .arg("--check")
        .arg("--check-data")
        .arg(&val)
        .arg("--ort-lib")
        .arg(&lib)
        .status()
        .unwrap();
    assert!(st.success());

    // Out of the box: no --check-data, run where no dataset exists → generated images.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_codetr-export"))
        .current_dir(empty.path())
        .arg("--checkpoint")
        .arg(&a)
        .arg("--out")
        .arg(dir.path().join("fresh.onnx"))
        .args(["--check", "--check-batches", "1,2"])
        .arg("--ort-lib")
        .arg(&lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("2 images") && stdout.contains("check: PASS"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A --check-data that is not a COCO split: exit 2 naming the flag, before any export.
    let target = dir.path().join("never.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_codetr-export"))
        .arg("--checkpoint")
        .arg(&a)
        .arg("--out")
        .arg(&target)
        .arg("--check")
        .arg("--check-data")
        .arg(empty.path().join("missing"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--check-data") && stderr.contains("instances.json"),
        "{stderr}"
    );
    assert!(
        !target.exists(),
        "nothing is written when the check data is wrong"
    );
}

/// `--fp16`: the graph passes the full checker with strict type inference, runs in ONNX
/// Runtime with unchanged I/O types, keeps the marked regions fp32, and its sorted scores stay
/// within fp16 rounding of the fp32 Burn model's (both MSDA lowerings); same bytes twice.
#[test]
fn fp16_export_is_typed_valid_and_close_to_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("tiny.ckpt");
    init_checkpoint(&DetectorConfig::tiny(), &ckpt, 5);
    let (model, _) = checkpoint::load(&ckpt, &Device::flex()).unwrap();
    let s = model.config().input_size as usize;
    for msda in [Msda::GridSample, Msda::Gather] {
        let out = dir.path().join(format!("tiny16-{msda:?}.onnx"));
        let opts = ExportOptions {
            msda,
            fp16: true,
            ..ExportOptions::new(&ckpt, &out)
        };
        let report = export(&opts).unwrap();
        let f = report.fp16.clone().expect("fp16 report");
        assert!(f.fp16_nodes > 0 && f.fp32_nodes > 0 && f.casts > 0, "{f:?}");
        assert!(f.fp16_initializers > f.fp32_initializers, "{f:?}");
        let n = 2;
        let px: Vec<u8> = (0..n * s * s * 3)
            .map(|i| ((i * 13 + 7) % 256) as u8)
            .collect();
        let sizes: Vec<[u32; 2]> = vec![[300, 400], [256, 256]];
        let flat: Vec<i64> = sizes
            .iter()
            .flat_map(|v| [i64::from(v[0]), i64::from(v[1])])
            .collect();
        let x = pixels_to_tensor(&px, n, s, s, &Device::flex()).unwrap();
        let (scores, _, _) = model.detect(x, &sizes).unwrap().to_host().unwrap();
        let res = run_onnx(&out, n, s, &px, &flat);
        assert_eq!(res["metadata"]["codetr.precision"], "fp16");
        let o = &res["outputs"];
        let got = floats(&o["scores"]);
        assert_eq!(got.len(), scores.len());
        // Scores are sorted per image, so the k-th largest can be compared whatever fp16 does
        // to the order of near-equal ones.
        let worst = got
            .iter()
            .zip(&scores)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 2e-2, "{msda:?}: sorted scores differ by {worst}");
        let boxes = floats(&o["boxes"]);
        assert!(
            boxes
                .iter()
                .all(|b| b.is_finite() && *b >= 0.0 && *b <= 400.0)
        );
        eprintln!("fp16 {msda:?}: {f:?}; sorted scores within {worst:.2e} of fp32 Burn");
        let again = dir.path().join("again16.onnx");
        export(&ExportOptions {
            out: again.clone(),
            ..opts
        })
        .unwrap();
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&again).unwrap(),
            "fp16 export is not deterministic"
        );
    }
}

/// `--dynamic-size`: symbolic H and W, no ScatterND, metadata input_size null; `--check`
/// passes at the preset size and two others on real val images, with both MSDA lowerings, and
/// the bytes are deterministic. The fp16 pass types it (runs in ORT at a non-preset size).
#[test]
fn dynamic_size_export_checks_at_three_sizes_with_both_lowerings() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = small_val_set_and_model(dir.path(), 2, 4);
    let ckpt = dir.path().join("d.ckpt");
    init_checkpoint(&cfg, &ckpt, 3);
    let lib = ort_library();
    let val = data.join("val");
    for msda in [Msda::GridSample, Msda::Gather] {
        let out = dir.path().join(format!("dyn-{msda:?}.onnx"));
        let opts = ExportOptions {
            msda,
            dynamic_size: true,
            ..ExportOptions::new(&ckpt, &out)
        };
        let report = export(&opts).unwrap();
        assert_eq!(report.input_size, None);
        let bytes = std::fs::read(&out).unwrap();
        // full checker + strict shape inference with symbolic H, W, and a run at 72×200
        let px: Vec<u8> = (0..72 * 200 * 3)
            .map(|i| ((i * 5 + 3) % 256) as u8)
            .collect();
        let res = run_onnx_hw(&out, 1, 72, 200, &px, &[72, 200]);
        assert_eq!(res["metadata"]["codetr.input_size"], "null");
        let ops: Vec<&str> = res["ops"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(!ops.contains(&"ScatterND"), "{ops:?}");
        let c = codetr_export::check::check(&out, &ckpt, None, &val, &[1, 2], &lib).unwrap();
        eprintln!("dynamic {msda:?}: {c:?}");
        assert_eq!(c.sizes.len(), 3);
        assert!(c.passed, "{c:?}");
        export(&ExportOptions {
            out: dir.path().join("again.onnx"),
            ..opts.clone()
        })
        .unwrap();
        assert!(bytes == std::fs::read(dir.path().join("again.onnx")).unwrap());
        // fp16 + dynamic: typed (strict checker in run_onnx) and runs at a non-preset size
        let out16 = dir.path().join(format!("dyn16-{msda:?}.onnx"));
        export(&ExportOptions {
            out: out16.clone(),
            fp16: true,
            ..opts
        })
        .unwrap();
        let (h, w) = (104, 152);
        let px: Vec<u8> = (0..h * w * 3).map(|i| ((i * 7 + 1) % 256) as u8).collect();
        let res = run_onnx_hw(&out16, 1, h, w, &px, &[300, 400]);
        let scores = floats(&res["outputs"]["scores"]);
        assert_eq!(scores.len(), 50);
        assert!(scores.iter().all(|s| s.is_finite()));
    }
}

/// The shipped model (models/codino-tiny-synth, a trained checkpoint): its committed graph
/// matches its checkpoint (≤1e-4 on the committed sample images, batch 1 and 3) and carries
/// that checkpoint's identity; the trained checkpoint also exports and checks with the gather
/// lowering and with a dynamic input size.
#[test]
fn shipped_model_matches_its_checkpoint_and_reexports_with_every_lowering() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/codino-tiny-synth");
    let (onnx, ckpt, samples) = (
        dir.join("model.onnx"),
        dir.join("model.ckpt"),
        dir.join("samples"),
    );
    let lib = ort_library();
    let c = codetr_export::check::check(&onnx, &ckpt, None, &samples, &[1, 3], &lib).unwrap();
    eprintln!("shipped graph vs its checkpoint: {c:?}");
    assert!(c.passed, "{c:?}");
    let (header, _) = checkpoint::read(&ckpt).unwrap();
    assert!(header.step > 0, "the shipped checkpoint is a trained one");
    let s = header.config.input_size as usize;
    let res = run_onnx(&onnx, 1, s, &vec![0u8; s * s * 3], &[256, 256]);
    assert_eq!(
        res["metadata"]["codetr.checkpoint_sha256"].as_str(),
        header.identity()
    );
    let tmp = tempfile::tempdir().unwrap();
    for (msda, dynamic_size) in [(Msda::Gather, false), (Msda::GridSample, true)] {
        let out = tmp.path().join("re.onnx");
        export(&ExportOptions {
            msda,
            dynamic_size,
            ..ExportOptions::new(&ckpt, &out)
        })
        .unwrap();
        let c = codetr_export::check::check(&out, &ckpt, None, &samples, &[1, 3], &lib).unwrap();
        eprintln!("shipped checkpoint, {msda:?}, dynamic {dynamic_size}: {c:?}");
        assert!(c.passed, "{c:?}");
    }
}

/// An official Co-DINO `.pth` (tests/reference/make_official_fixtures.py: the official
/// mmdetection 3.3.0 model at small dimensions, random weights) → ONNX: the graph's detections
/// on the fixture images are the official model's (≤ 1e-4), the class names come from the
/// checkpoint, the binary's `--check` passes, and a checkpoint that does not fit exits 2 with
/// nothing written.
/// The official small Co-DINO (core/tests/fixtures/official): checkpoint, model config and
/// the bytes of the official model's outputs (safetensors).
fn official_fixture() -> (PathBuf, PathBuf, Vec<u8>) {
    official_fixture_named("co_dino_small")
}

/// Checkpoint, model config and official outputs of fixture `name`.
fn official_fixture_named(name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/official");
    let bytes = std::fs::read(dir.join(format!("{name}.outputs.safetensors"))).unwrap();
    (
        dir.join(format!("{name}.pth")),
        dir.join(format!("{name}.toml")),
        bytes,
    )
}

/// A graph's outputs (`onnx_run.py`) against the official ones of case `prefix`: the largest
/// score difference position by position (a near-tie may swap two detections, not a score),
/// and how many of all boxes are within 1e-4 × the input side.
fn vs_official(
    got: &serde_json::Value,
    st: &safetensors::SafeTensors,
    prefix: &str,
) -> (f32, usize, usize) {
    let (ours, refs) = (
        floats(&got["outputs"]["scores"]),
        st_f32(st, &format!("{prefix}.scores")),
    );
    assert_eq!(ours.len(), refs.len());
    let worst = ours
        .iter()
        .zip(&refs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let (ob, rb) = (
        floats(&got["outputs"]["boxes"]),
        st_f32(st, &format!("{prefix}.boxes")),
    );
    let side = st.tensor(&format!("{prefix}.pixels")).unwrap().shape()[1] as f32;
    let close = ob
        .chunks(4)
        .zip(rb.chunks(4))
        .filter(|(a, b)| a.iter().zip(*b).all(|(x, y)| (x - y).abs() <= side * 1e-4))
        .count();
    (worst, close, refs.len())
}

/// A little-endian f32 tensor of a safetensors file, flat.
fn st_f32(st: &safetensors::SafeTensors, key: &str) -> Vec<f32> {
    st.tensor(key)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn official_checkpoint_exports_to_a_graph_that_matches_the_official_model() {
    let (pth, toml, bytes) = official_fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("official.onnx");
    let report = export(&ExportOptions {
        model_config: Some(toml.clone()),
        ..ExportOptions::new(&pth, &out)
    })
    .unwrap();
    let imp = report.import.as_ref().unwrap();
    assert!(report.dropped_params > 0 && imp.counters > 0);

    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let px = st.tensor("nopad.pixels").unwrap().data().to_vec();
    let got = run_onnx(&out, 2, 128, &px, &[128, 128, 128, 128]);
    let (worst, close, total) = vs_official(&got, &st, "nopad");
    assert!(worst <= 1e-4, "ONNX vs official scores: {worst}");
    assert!(close * 10 >= total * 9, "{close}/{total} boxes in place");
    use prost::Message;
    let proto =
        codetr_core::onnx::proto::ModelProto::decode(std::fs::read(&out).unwrap().as_slice())
            .unwrap();
    let meta = codetr_model::ModelMetadata::from_props(
        proto
            .metadata_props
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str())),
    )
    .unwrap();
    assert_eq!(meta.classes[1], "bicycle");
    assert_eq!(meta.checkpoint_sha256.len(), 64);

    let lib = ort_library();
    let st = Command::new(env!("CARGO_BIN_EXE_codetr-export"))
        .arg("--checkpoint")
        .arg(&pth)
        .arg("--model-config")
        .arg(&toml)
        .arg("--out")
        .arg(dir.path().join("cli.onnx"))
        .args(["--check", "--check-batches", "1,2", "--ort-lib"])
        .arg(&lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success() && stdout.contains("check: PASS") && stdout.contains("imported"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let target = dir.path().join("bad.onnx");
    let st = Command::new(env!("CARGO_BIN_EXE_codetr-export"))
        .arg("--checkpoint")
        .arg(pth.with_file_name("co_dino_small_bad.pth"))
        .arg("--model-config")
        .arg(&toml)
        .arg("--out")
        .arg(&target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mask_head.conv_logits.weight"), "{stderr}");
    assert!(!target.exists());
    // --model-config belongs to official checkpoints only.
    let ours = dir.path().join("ours.ckpt");
    init_checkpoint(&DetectorConfig::tiny(), &ours, 1);
    let err = export(&ExportOptions {
        model_config: Some(toml),
        ..ExportOptions::new(&ours, dir.path().join("x.onnx"))
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("--model-config"), "{err}");
}

#[test]
fn letterbox_graph_of_an_official_checkpoint_masks_the_padding_like_the_official_model() {
    // The fixture's padded case: image 1 is 96 × 112 top-left in the 128² input. The graph
    // (fixed size and dynamic size) takes `valid_sizes` and must give the official outputs.
    let (pth, toml, bytes) = official_fixture();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let valid: Vec<i64> = st
        .tensor("pad.valid")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(valid, [128, 128, 96, 112]);
    let px = st.tensor("pad.pixels").unwrap().data().to_vec();
    let dir = tempfile::tempdir().unwrap();
    for dynamic in [false, true] {
        let out = dir.path().join(format!("letterbox_{dynamic}.onnx"));
        // the dynamic graph also records keep-ratio limits (metadata only: same graph)
        let limits = dynamic.then_some([96, 128]);
        export(&ExportOptions {
            model_config: Some(toml.clone()),
            resize: codetr_model::Resize::Letterbox,
            dynamic_size: dynamic,
            letterbox_limits: limits,
            ..ExportOptions::new(&pth, &out)
        })
        .unwrap();
        let inputs = serde_json::json!({
            "images": {"dtype": "uint8", "shape": [2, 128, 128, 3], "data": px},
            "orig_sizes": {"dtype": "int64", "shape": [2, 2], "data": valid},
            "valid_sizes": {"dtype": "int64", "shape": [2, 2], "data": valid},
        });
        let ip = dir.path().join("in.json");
        std::fs::write(&ip, inputs.to_string()).unwrap();
        let got: serde_json::Value = python_json("onnx_run.py", &[out.as_os_str(), ip.as_os_str()]);
        let (worst, close, total) = vs_official(&got, &st, "pad");
        eprintln!(
            "letterbox graph (dynamic size: {dynamic}) vs official, padded batch: scores \
             {worst:.2e}, {close}/{total} boxes within 1e-4·side"
        );
        assert!(worst <= 1e-4, "ONNX vs official scores: {worst}");
        assert!(close * 10 >= total * 9, "{close}/{total} boxes");
        let meta = &got["metadata"];
        assert_eq!(meta["codetr.resize"], "letterbox");
        if dynamic {
            // … and, by default, its batch bounds at the limits' two canvases (version 5: the
            // stride a letterbox canvas should be a multiple of)
            assert_eq!(meta["codetr.format_version"], "5");
            assert_eq!(meta["codetr.size_multiple"], "64");
            assert_eq!(meta["codetr.letterbox_limits"], "[96,128]");
            let at: serde_json::Value =
                serde_json::from_str(meta["codetr.max_batch_at"].as_str().unwrap()).unwrap();
            assert_eq!(at[0]["input_size"], serde_json::json!([96, 128]));
            assert_eq!(at[1]["input_size"], serde_json::json!([128, 96]));
        } else {
            assert_eq!(meta["codetr.format_version"], "5");
            assert!(meta.get("codetr.letterbox_limits").is_none());
        }
    }
    // limits without letterbox, or not SHORT,LONG: exit 2, nothing written
    for args in [
        ["--resize", "stretch", "--letterbox-limits", "800,1333"],
        ["--resize", "letterbox", "--letterbox-limits", "1333,800"],
        ["--resize", "letterbox", "--letterbox-limits", "800"],
    ] {
        let out = dir.path().join("refused.onnx");
        let st = Command::new(env!("CARGO_BIN_EXE_codetr-export"))
            .arg("--checkpoint")
            .arg(&pth)
            .arg("--model-config")
            .arg(&toml)
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(st.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&st.stderr).contains("--letterbox-limits"));
        assert!(!out.exists());
    }
    // `--check` feeds a letterbox graph batches that mix landscape and portrait padding and
    // compares it with the Burn model on the same padded batch (ORT vs Burn ≤ 1e-4).
    letterbox_checks_pass(&pth, &toml, dir.path(), "1,3");
    // a fixed rectangular graph (`--input-size`, the official 800×1333 canvas in miniature):
    // its metadata says so and `--check` runs it at its own size
    let rect = dir.path().join("rect.onnx");
    let cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_codetr-export"))
            .arg("--checkpoint")
            .arg(&pth)
            .arg("--model-config")
            .arg(&toml)
            .arg("--out")
            .arg(&rect)
            .args(["--resize", "letterbox", "--letterbox-limits", "96,160"])
            .args(extra)
            .arg("--ort-lib")
            .arg(ort_library())
            .output()
            .unwrap()
    };
    let st = cli(&[
        "--input-size",
        "96x160",
        "--check",
        "--check-batches",
        "1,3",
    ]);
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success() && stdout.contains("check: PASS") && stdout.contains("[[96, 160]]"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // the checker (strict shape inference) and ONNX Runtime take it at 96×160
    let inputs = serde_json::json!({
        "images": {"dtype": "uint8", "shape": [1, 96, 160, 3], "data": vec![0u8; 96 * 160 * 3]},
        "orig_sizes": {"dtype": "int64", "shape": [1, 2], "data": [96, 160]},
        "valid_sizes": {"dtype": "int64", "shape": [1, 2], "data": [96, 160]},
    });
    let ip = dir.path().join("rect.json");
    std::fs::write(&ip, inputs.to_string()).unwrap();
    let got: serde_json::Value = python_json("onnx_run.py", &[rect.as_os_str(), ip.as_os_str()]);
    assert_eq!(
        got["metadata"]["codetr.input_size"], "[96,160]",
        "{}",
        got["metadata"]
    );
    std::fs::remove_file(&rect).unwrap();
    for bad in [
        &["--input-size", "96x160", "--dynamic-size"][..],
        &["--input-size", "96"],
    ] {
        let st = cli(bad);
        assert_eq!(st.status.code(), Some(2), "{bad:?}");
        assert!(!rect.exists());
    }
}

/// `codetr-export --resize letterbox --check` of an official checkpoint passes, at the fixed
/// size and at dynamic size (which also checks two other input sizes).
fn letterbox_checks_pass(pth: &Path, toml: &Path, dir: &Path, batches: &str) {
    let lib = ort_library();
    for dynamic in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_codetr-export"));
        cmd.arg("--checkpoint")
            .arg(pth)
            .arg("--model-config")
            .arg(toml)
            .arg("--out")
            .arg(dir.join(format!("cli_{dynamic}.onnx")))
            .args([
                "--resize",
                "letterbox",
                "--check",
                "--check-batches",
                batches,
            ])
            .arg("--ort-lib")
            .arg(&lib);
        if dynamic {
            cmd.arg("--dynamic-size");
        }
        let st = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&st.stdout);
        eprintln!("{stdout}");
        assert!(
            st.status.success() && stdout.contains("check: PASS"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

/// The official Co-DINO with a Swin backbone (window 7, 120² input: every stage pads its
/// windows, an odd map is merged): the stretch graph gives the official unpadded outputs and
/// the letterbox graphs (fixed and dynamic size) the official padded ones; `--check` passes,
/// for the dynamic graph at two more sizes (other paddings, shift masks built in the graph).
#[test]
fn official_swin_checkpoint_exports_to_graphs_that_match_the_official_model() {
    let (pth, toml, bytes) = official_fixture_named("co_dino_swin_small");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let side = 120usize;
    for (resize, prefix, dynamic) in [
        (codetr_model::Resize::Stretch, "nopad", false),
        (codetr_model::Resize::Letterbox, "pad", false),
        (codetr_model::Resize::Letterbox, "pad", true),
    ] {
        let out = dir.path().join(format!("swin_{prefix}_{dynamic}.onnx"));
        export(&ExportOptions {
            model_config: Some(toml.clone()),
            resize,
            dynamic_size: dynamic,
            ..ExportOptions::new(&pth, &out)
        })
        .unwrap();
        let px = st
            .tensor(&format!("{prefix}.pixels"))
            .unwrap()
            .data()
            .to_vec();
        let valid: Vec<i64> = if prefix == "pad" {
            st.tensor("pad.valid")
                .unwrap()
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        } else {
            vec![side as i64; 4]
        };
        let mut inputs = serde_json::json!({
            "images": {"dtype": "uint8", "shape": [2, side, side, 3], "data": px},
            "orig_sizes": {"dtype": "int64", "shape": [2, 2], "data": valid},
        });
        if prefix == "pad" {
            inputs["valid_sizes"] = serde_json::json!(
                {"dtype": "int64", "shape": [2, 2], "data": valid}
            );
        }
        let ip = dir.path().join("in.json");
        std::fs::write(&ip, inputs.to_string()).unwrap();
        let got: serde_json::Value = python_json("onnx_run.py", &[out.as_os_str(), ip.as_os_str()]);
        let (worst, close, total) = vs_official(&got, &st, prefix);
        eprintln!(
            "Swin {resize:?} graph (dynamic size: {dynamic}) vs official, {prefix}: scores \
             {worst:.2e}, {close}/{total} boxes within 1e-4·side"
        );
        assert!(worst <= 1e-4, "ONNX vs official scores: {worst}");
        assert!(close * 10 >= total * 9, "{close}/{total} boxes");
    }
    letterbox_checks_pass(&pth, &toml, dir.path(), "1,2");
}

/// `--check-map` on a letterbox graph feeds what the server feeds: each image decoded and
/// letterboxed into the input with the graph's keep-ratio limits, padding masked. On non-square
/// images whose scale the limits decide (320×192 → 250×150 in the 256² input), with the shipped
/// (trained) weights: the graph's AP equals the Burn model's on the same canvases, and the Burn
/// AP equals `validate` through the training data loader's letterbox with the same limits (the
/// server's preprocessing is the training one).
#[test]
fn map_check_of_a_letterbox_graph_uses_padded_inputs_with_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    codetr_data::synth::generate(
        dir.path(),
        &codetr_data::synth::SynthConfig {
            train: 0,
            val: 12,
            test: 0,
            seed: 4,
            width: 320,
            height: 192,
        },
        None,
    )
    .unwrap();
    let val = dir.path().join("val");
    let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/codino-tiny-synth/model.ckpt");
    let out = dir.path().join("lb.onnx");
    let limits = Some([150, 250]);
    export(&ExportOptions {
        resize: codetr_model::Resize::Letterbox,
        letterbox_limits: limits,
        ..ExportOptions::new(&ckpt, &out)
    })
    .unwrap();
    let m = codetr_export::check::map_compare(&out, &ckpt, None, &val, 0, &ort_library()).unwrap();
    eprintln!("letterbox map check: {m:?}");
    assert_eq!(m.images, 12);
    assert!((m.ap_onnx - m.ap_burn).abs() <= 1e-3, "{m:?}");
    let device = Device::flex();
    let (det, _) = checkpoint::load(&ckpt, &device).unwrap();
    let ds = std::sync::Arc::new(
        codetr_data::CocoDataset::load_split(&val, Default::default()).unwrap(),
    );
    let v = codetr_train::train::fit::validate(
        &det,
        &ds,
        0,
        1,
        (codetr_model::Resize::Letterbox, limits),
    )
    .unwrap();
    assert!(
        v.ap > 0.05,
        "the shipped model finds objects here: {}",
        v.ap
    );
    assert!((v.ap - m.ap_burn).abs() < 1e-9, "{} vs {}", v.ap, m.ap_burn);
}
