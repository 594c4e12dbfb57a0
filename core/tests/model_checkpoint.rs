//! Checkpoints: exact round trip, and a clear error for every kind of bad file.

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use codetr_core::error::Error;
use codetr_core::model::DetectorConfig;
use codetr_core::model::checkpoint::{load, load_expecting, save};
use codetr_core::model::detector::pixels_to_tensor;

fn small() -> DetectorConfig {
    let mut c = DetectorConfig::tiny();
    c.num_classes = 3;
    c.transformer.encoder_layers = 1;
    c.transformer.decoder_layers = 2;
    c.transformer.num_queries = 20;
    c.max_detections = 10;
    c.input_size = 128;
    c
}

fn names() -> Vec<String> {
    vec!["a".into(), "b".into(), "c".into()]
}

fn logits(m: &codetr_core::model::Detector, dev: &Device) -> Vec<f32> {
    let px: Vec<u8> = (0..128 * 128 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let x = pixels_to_tensor(&px, 1, 128, 128, dev).unwrap();
    m.forward(x)
        .unwrap()
        .logits
        .last()
        .unwrap()
        .clone()
        .into_data()
        .try_to_vec()
        .unwrap()
}

fn expect_checkpoint_err(r: Result<impl Sized, Error>, needle: &str) {
    match r {
        Err(e @ Error::Checkpoint { .. }) => assert!(e.to_string().contains(needle), "{e}"),
        Err(e) => panic!("expected a checkpoint error containing {needle:?}, got {e}"),
        Ok(_) => panic!("expected an error containing {needle:?}"),
    }
}

#[test]
fn round_trip_gives_identical_outputs_and_header() {
    let dev = Device::flex();
    dev.seed(5);
    let cfg = small();
    let model = cfg.init(&dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.ckpt");
    let h = save(
        &p,
        &model,
        &names(),
        17,
        serde_json::json!({"AP": 0.5}),
        vec![],
    )
    .unwrap();
    let (loaded, h2) = load(&p, &dev).unwrap();
    assert_eq!(h, h2);
    assert_eq!(h2.step, 17);
    assert_eq!(h2.class_names, names());
    assert_eq!(h2.model_sha256().map(str::len), Some(64));
    assert_eq!(logits(&model, &dev), logits(&loaded, &dev));
    load_expecting(&p, &cfg, &dev).unwrap();
    // Saving is deterministic: same weights → same bytes.
    let p2 = dir.path().join("m2.ckpt");
    save(
        &p2,
        &loaded,
        &names(),
        17,
        serde_json::json!({"AP": 0.5}),
        vec![],
    )
    .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());
    // The model section is the record's burnpack bytes (streamed through a scratch file,
    // which is gone), and it loads as a record.
    let (_, sections) = codetr_core::model::checkpoint::read(&p).unwrap();
    let record = burn::module::Module::into_record(model.clone())
        .into_bytes()
        .unwrap();
    assert_eq!(
        sections[0].1,
        record.to_vec(),
        "the model section is the record's bytes"
    );
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["m.ckpt", "m2.ckpt"], "no scratch file is left");
}

#[test]
fn bad_files_are_clear_errors() {
    let dev = Device::flex();
    let cfg = small();
    let model = cfg.init(&dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.ckpt");
    save(&p, &model, &names(), 0, serde_json::Value::Null, vec![]).unwrap();
    let bytes = std::fs::read(&p).unwrap();

    let q = dir.path().join("bad.ckpt");
    std::fs::write(&q, &bytes[..bytes.len() - 100]).unwrap();
    expect_checkpoint_err(load(&q, &dev), "truncated");
    std::fs::write(&q, &bytes[..20]).unwrap();
    expect_checkpoint_err(load(&q, &dev), "truncated header");
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 50] ^= 0xFF;
    std::fs::write(&q, &flipped).unwrap();
    expect_checkpoint_err(load(&q, &dev), "SHA-256");
    std::fs::write(&q, b"PK\x03\x04 definitely a zip").unwrap();
    expect_checkpoint_err(load(&q, &dev), "bad magic");
    assert!(matches!(
        load(&dir.path().join("none.ckpt"), &dev),
        Err(Error::Io { .. })
    ));

    let mut other = cfg.clone();
    other.transformer.num_queries = 30;
    expect_checkpoint_err(load_expecting(&p, &other, &dev), "different config");
    expect_checkpoint_err(
        save(
            &q,
            &model,
            &["x".to_string()],
            0,
            serde_json::Value::Null,
            vec![],
        ),
        "1 class names",
    );
}

#[test]
fn nan_weights_are_refused_at_load() {
    let dev = Device::flex();
    let cfg = small();
    let mut model = cfg.init(&dev).unwrap();
    assert_eq!(codetr_core::model::params::first_non_finite(&model), None);
    model.level_embed = Param::from_tensor(Tensor::full([cfg.num_levels(), 128], f32::NAN, &dev));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.ckpt");
    save(&p, &model, &names(), 0, serde_json::Value::Null, vec![]).unwrap();
    expect_checkpoint_err(load(&p, &dev), "level_embed");
}
