//! Helpers the exporter's integration tests share.

use std::path::Path;

use burn::tensor::Device;
use codetr_core::model::{DetectorConfig, checkpoint};

/// The Python with onnx + onnxruntime (`make test` sets it to the project's .venv).
pub fn python() -> String {
    std::env::var("CODETR_PYTHON").unwrap_or_else(|_| {
        panic!(
            "CODETR_PYTHON is not set: run `make test` (it creates .venv with onnx + onnxruntime)"
        )
    })
}

/// A randomly initialised checkpoint of `cfg` with classes `class0..`.
pub fn init_checkpoint(cfg: &DetectorConfig, path: &Path, seed: u64) {
    let dev = Device::flex();
    dev.seed(seed);
    let model = cfg.init(&dev).unwrap();
    let names: Vec<String> = (0..cfg.num_classes).map(|i| format!("class{i}")).collect();
    checkpoint::save(path, &model, &names, 0, serde_json::Value::Null, vec![]).unwrap();
}

/// Runs `tests/python/{script}` with `args` and parses its stdout as JSON (the script's
/// stderr in the panic message when it fails).
pub fn python_json<T: serde::de::DeserializeOwned>(script: &str, args: &[&std::ffi::OsStr]) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/python")
        .join(script);
    let out = std::process::Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
