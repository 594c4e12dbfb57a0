//! The shipped model (`models/codino-tiny-synth`, what `make run` serves) end to end: the
//! server loads it, and on each committed sample image returns what the Burn model detects
//! on the same file (`samples/expected_detections.json`, written by scripts/ship-model.sh
//! with `codetr-train validate`): the same classes and scores to 1e-3, boxes to 0.5 px.
//! Needs `CODETR_PYTHON` (for the ONNX Runtime wheel's library) — `make test` sets it.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;

fn shipped() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/codino-tiny-synth"
    ))
}

fn read_json(p: PathBuf) -> Value {
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn shipped_model_serves_what_the_burn_model_detects_on_its_samples() {
    let dir = shipped();
    let samples = dir.join("samples");
    let gt = read_json(samples.join("instances.json"));
    let expected = read_json(samples.join("expected_detections.json"));
    let cats: HashMap<u64, String> = gt["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_u64().unwrap(),
                c["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    // the directory, as `make run` passes it
    let s = common::Server::start_model(&dir, &[], &[]);
    let models = s.get("/v1/models").unwrap().json();
    assert_eq!(models["name"], "codino-tiny-synth", "{models}");
    let images = gt["images"].as_array().unwrap();
    assert!(!images.is_empty());
    let mut compared = 0;
    for img in images {
        let id = img["id"].as_u64().unwrap();
        let file = samples
            .join("images")
            .join(img["file_name"].as_str().unwrap());
        let body = std::fs::read(&file).unwrap();
        let r = s.post(
            "/v1/detect?score_threshold=0&max_detections=100",
            "image/jpeg",
            &body,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        let out = &j["images"][0];
        assert_eq!(out["width"], img["width"]);
        assert_eq!(out["height"], img["height"]);
        let got = out["detections"].as_array().unwrap();
        let want: Vec<&Value> = expected
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["image_id"].as_u64() == Some(id))
            .collect();
        assert_eq!(got.len(), want.len(), "image {id}");
        // The top detections (well separated scores) must agree one for one.
        for (g, w) in got.iter().zip(&want).take(10) {
            let (gs, ws) = (g["score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
            assert!((gs - ws).abs() <= 1e-3, "image {id}: score {gs} vs {ws}");
            let wcat = w["category_id"].as_u64().unwrap();
            assert_eq!(g["label"].as_str(), Some(cats[&wcat].as_str()));
            let wb: Vec<f64> = w["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let b = &g["box"];
            let gb = [
                b["x1"].as_f64().unwrap(),
                b["y1"].as_f64().unwrap(),
                b["x2"].as_f64().unwrap() - b["x1"].as_f64().unwrap(),
                b["y2"].as_f64().unwrap() - b["y1"].as_f64().unwrap(),
            ];
            for (a, e) in gb.iter().zip(&wb) {
                assert!((a - e).abs() <= 0.5, "image {id}: box {gb:?} vs {wb:?}");
            }
            compared += 1;
        }
    }
    eprintln!(
        "shipped model: {} sample images, {compared} top detections equal to Burn's",
        images.len()
    );
}
