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

/// Category id → name of a COCO file.
fn category_names(gt: &Value) -> HashMap<u64, String> {
    gt["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_u64().unwrap(),
                c["name"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// A COCO `[x, y, w, h]`.
fn coco_bbox(b: &Value) -> [f64; 4] {
    let v: Vec<f64> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    [v[0], v[1], v[2], v[3]]
}

/// The server's `{x1, y1, x2, y2}` as `[x, y, w, h]`.
fn server_box(b: &Value) -> [f64; 4] {
    let f = |k: &str| b[k].as_f64().unwrap();
    [f("x1"), f("y1"), f("x2") - f("x1"), f("y2") - f("y1")]
}

#[test]
fn shipped_model_serves_what_the_burn_model_detects_on_its_samples() {
    let dir = shipped();
    let samples = dir.join("samples");
    let gt = read_json(samples.join("instances.json"));
    let expected = read_json(samples.join("expected_detections.json"));
    let cats = category_names(&gt);
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
            let wb = coco_bbox(&w["bbox"]);
            let gb = server_box(&g["box"]);
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

/// IoU of two `[x, y, w, h]` boxes.
fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let iw = ((a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0])).max(0.0);
    let ih = ((a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The score threshold of the README's quick start and of the model card's operating point.
/// The model's scores are low (quality focal loss: the target is the IoU), and at the
/// server's default of 0.3 it finds fewer (11 of the 24 sample objects, model card).
const QUICK_START_THRESHOLD: &str = "0.2";

/// Issue 9: the server, asked as the README's quick start asks, finds most of the
/// ground-truth objects in the committed samples: the right class at IoU ≥ 0.5, each
/// detection used for one object at most (highest score first, as COCO matches).
#[test]
fn shipped_model_finds_most_sample_objects_at_the_quick_start_threshold() {
    let dir = shipped();
    let samples = dir.join("samples");
    let gt = read_json(samples.join("instances.json"));
    let cats: HashMap<String, u64> = category_names(&gt)
        .into_iter()
        .map(|(id, name)| (name, id))
        .collect();
    let s = common::Server::start_model(&dir, &[], &[]);
    let (mut found, mut total, mut false_positives) = (0usize, 0usize, 0usize);
    for img in gt["images"].as_array().unwrap() {
        let id = img["id"].as_u64().unwrap();
        let file = samples
            .join("images")
            .join(img["file_name"].as_str().unwrap());
        let r = s.post(
            &format!("/v1/detect?score_threshold={QUICK_START_THRESHOLD}"),
            "image/jpeg",
            &std::fs::read(&file).unwrap(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        // (category, box) by descending score: the server's order
        let dets: Vec<(u64, [f64; 4])> = j["images"][0]["detections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (cats[d["label"].as_str().unwrap()], server_box(&d["box"])))
            .collect();
        let objects: Vec<(u64, [f64; 4])> = gt["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["image_id"].as_u64() == Some(id))
            .map(|a| (a["category_id"].as_u64().unwrap(), coco_bbox(&a["bbox"])))
            .collect();
        let mut taken = vec![false; objects.len()];
        for (cat, b) in &dets {
            let best = (0..objects.len())
                .filter(|&o| !taken[o] && objects[o].0 == *cat)
                .map(|o| (o, iou(*b, objects[o].1)))
                .filter(|&(_, v)| v >= 0.5)
                .max_by(|x, y| x.1.total_cmp(&y.1));
            match best {
                Some((o, _)) => taken[o] = true,
                None => false_positives += 1,
            }
        }
        found += taken.iter().filter(|&&t| t).count();
        total += objects.len();
    }
    eprintln!(
        "shipped model at score >= {QUICK_START_THRESHOLD}: {found} of {total} sample objects \
         found (right class, IoU >= 0.5), {false_positives} other detections"
    );
    assert!(total > 0);
    assert!(
        2 * found > total,
        "only {found} of {total} sample objects found at score >= {QUICK_START_THRESHOLD}"
    );
}
