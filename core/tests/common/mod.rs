//! Shared by the integration tests: the HF-fixture models and running an ONNX file through
//! the Python reference tools.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::Device;
use codetr_core::model::{Detector, DetectorConfig};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// A detector built from `<name>.toml` with the fixture weights loaded (all of them, exactly).
pub fn load_hf_model(name: &str, dev: &Device) -> Detector {
    let text = std::fs::read_to_string(fixture(&format!("{name}.toml"))).unwrap();
    let cfg = DetectorConfig::from_toml(&text).unwrap();
    let mut model = cfg.init(dev).unwrap();
    let mut store = SafetensorsStore::from_file(fixture(&format!("{name}.weights.safetensors")))
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(true);
    let result = model.load_from(&mut store).unwrap();
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    assert!(result.missing.is_empty(), "missing: {:?}", result.missing);
    assert!(result.unused.is_empty(), "unused: {:?}", result.unused);
    let _ = model.num_params();
    model
}

pub fn python() -> String {
    std::env::var("CODETR_PYTHON").unwrap_or_else(|_| {
        panic!(
            "CODETR_PYTHON is not set: run `make test` (it creates .venv with onnx + onnxruntime)"
        )
    })
}

/// Runs `model` (an .onnx file) on `inputs` (the JSON of tests/python/onnx_run.py) and
/// returns its JSON answer.
pub fn onnx_run(model: &Path, inputs: &serde_json::Value) -> serde_json::Value {
    let ip = model.with_extension("inputs.json");
    std::fs::write(&ip, inputs.to_string()).unwrap();
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/python/onnx_run.py"
        ))
        .arg(model)
        .arg(&ip)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnx_run.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Max |a − b| between an ONNX output (JSON) and host values; panics on shape mismatch.
pub fn max_diff(out: &serde_json::Value, shape: &[usize], want: &[f32]) -> f32 {
    let got_shape: Vec<usize> = out["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(got_shape, shape);
    out["data"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want)
        .map(|(a, b)| (a.as_f64().unwrap() as f32 - b).abs())
        .fold(0.0, f32::max)
}
