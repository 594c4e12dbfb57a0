//! Module emitters against Burn: each lowered piece of the detector, run in ONNX Runtime,
//! matches the Burn module on the same input to 1e-4 (HF-fixture weights: random BatchNorm
//! statistics to fold, conv biases, GroupNorm). Needs `CODETR_PYTHON`.

mod common;

use burn::tensor::Device;
use codetr_core::model::detector::pixels_to_tensor;
use codetr_core::onnx::builder::write;
use codetr_core::onnx::{Dim, ElemType, GraphBuilder};

#[test]
fn preprocess_backbone_and_neck_match_burn() {
    let dev = Device::flex();
    for name in ["ddetr_r50", "ddetr_r18"] {
        let model = common::load_hf_model(name, &dev);
        let (h, w) = if name == "ddetr_r50" {
            (128, 160)
        } else {
            (160, 128)
        };
        let n = 2;
        let px: Vec<u8> = (0..n * h * w * 3)
            .map(|i| ((i * 31 + 7) % 256) as u8)
            .collect();
        let x = pixels_to_tensor(&px, n, h, w, &dev).unwrap();
        let maps = model
            .neck
            .forward(model.backbone.forward(model.normalize(x)));

        let mut g = GraphBuilder::new("neck");
        let dims = [
            Dim::Named("N".into()),
            Dim::Fixed(h as i64),
            Dim::Fixed(w as i64),
            Dim::Fixed(3),
        ];
        let images = g.input("images", ElemType::U8, &dims).unwrap();
        let z = model.emit_normalize(&mut g, &images);
        let feats = model.backbone.emit(&mut g, &z, None).unwrap();
        let outs = model.neck.emit(&mut g, &feats).unwrap();
        for (i, (o, m)) in outs.iter().zip(&maps).enumerate() {
            let [_, c, mh, mw] = m.dims();
            let d = [
                Dim::Named("N".into()),
                Dim::Fixed(c as i64),
                Dim::Fixed(mh as i64),
                Dim::Fixed(mw as i64),
            ];
            g.output(o, &format!("map{i}"), ElemType::F32, &d).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("neck.onnx");
        write(&g.finish(17, "codetr-test", vec![]), &path).unwrap();
        let res = common::onnx_run(
            &path,
            &serde_json::json!({"images": {"dtype": "uint8", "shape": [n, h, w, 3], "data": px}}),
        );
        for (i, m) in maps.iter().enumerate() {
            let want: Vec<f32> = m.clone().into_data().try_to_vec().unwrap();
            let diff = common::max_diff(&res["outputs"][format!("map{i}")], &m.dims(), &want);
            eprintln!("{name} neck level {i}: max |onnx − burn| = {diff:.2e}");
            assert!(diff <= 1e-4, "{name} level {i}: {diff}");
        }
    }
}

/// Encoder memory of the graph against Burn; `dynamic` leaves H, W symbolic so positions,
/// reference points and MSDA's level splits come from `Shape` ops.
fn encoder_parity(dynamic: bool, lowering: codetr_model::Msda) {
    let dev = Device::flex();
    for name in ["ddetr_r50", "ddetr_r18"] {
        let model = common::load_hf_model(name, &dev);
        let (h, w) = if name == "ddetr_r50" {
            (128, 160)
        } else {
            (160, 128)
        };
        let n = 2;
        let px: Vec<u8> = (0..n * h * w * 3)
            .map(|i| ((i * 13 + 5) % 256) as u8)
            .collect();
        let x = pixels_to_tensor(&px, n, h, w, &dev).unwrap();
        let (src, pos, shapes) = model.features(x);
        let memory = model.encoder.forward(src, pos, &shapes, None);

        let mut g = GraphBuilder::new("encoder");
        let (dh, dw, size) = if dynamic {
            (Dim::Named("H".into()), Dim::Named("W".into()), None)
        } else {
            (Dim::Fixed(h as i64), Dim::Fixed(w as i64), Some([h, w]))
        };
        let dims = [Dim::Named("N".into()), dh, dw, Dim::Fixed(3)];
        let images = g.input("images", ElemType::U8, &dims).unwrap();
        let (src, pos, levels, _) = model.emit_features(&mut g, &images, size, None).unwrap();
        assert_eq!(levels.fixed.is_none(), dynamic);
        let mem = model
            .encoder
            .emit(&mut g, &src, &pos, &levels, lowering, None)
            .unwrap();
        let [_, s, d] = memory.dims();
        let od = [
            Dim::Named("N".into()),
            if dynamic {
                Dim::Named("S".into())
            } else {
                Dim::Fixed(s as i64)
            },
            Dim::Fixed(d as i64),
        ];
        g.output(&mem, "memory", ElemType::F32, &od).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enc.onnx");
        write(&g.finish(17, "codetr-test", vec![]), &path).unwrap();
        let res = common::onnx_run(
            &path,
            &serde_json::json!({"images": {"dtype": "uint8", "shape": [n, h, w, 3], "data": px}}),
        );
        let want: Vec<f32> = memory.clone().into_data().try_to_vec().unwrap();
        let diff = common::max_diff(&res["outputs"]["memory"], &memory.dims(), &want);
        eprintln!(
            "{name} encoder memory ({lowering:?}, dynamic {dynamic}): max |onnx − burn| = {diff:.2e}"
        );
        assert!(diff <= 1e-4, "{name}: {diff}");
    }
}

#[test]
fn encoder_with_grid_sample_msda_matches_burn() {
    encoder_parity(false, codetr_model::Msda::GridSample);
}

#[test]
fn encoder_with_dynamic_size_matches_burn_with_both_lowerings() {
    use codetr_model::Msda;
    encoder_parity(true, Msda::GridSample);
    encoder_parity(true, Msda::Gather);
}

/// The whole exported graph (pixels → labels, scores, boxes) against `Detector::detect`.
fn full_graph_parity(
    model: &codetr_core::model::Detector,
    h: usize,
    w: usize,
    n: usize,
    tag: &str,
) {
    let g = model
        .emit(Some([h, w]), codetr_model::Msda::GridSample)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    write(&g.finish(17, "codetr-test", vec![]), &path).unwrap();
    graph_parity(model, &path, h, w, n, tag);
}

/// The graph at `path` run on `n` images of `h × w` against `Detector::detect`.
fn graph_parity(
    model: &codetr_core::model::Detector,
    path: &std::path::Path,
    h: usize,
    w: usize,
    n: usize,
    tag: &str,
) {
    let dev = Device::flex();
    let px: Vec<u8> = (0..n * h * w * 3)
        .map(|i| ((i * 29 + 3) % 256) as u8)
        .collect();
    let sizes: Vec<[u32; 2]> = (0..n)
        .map(|i| [480 + 10 * i as u32, 640 - 20 * i as u32])
        .collect();
    let x = pixels_to_tensor(&px, n, h, w, &dev).unwrap();
    let det = model.detect(x, &sizes).unwrap();
    let (scores, labels, boxes) = det.to_host().unwrap();
    let flat_sizes: Vec<i64> = sizes
        .iter()
        .flat_map(|s| [i64::from(s[0]), i64::from(s[1])])
        .collect();
    let res = common::onnx_run(
        path,
        &serde_json::json!({
            "images": {"dtype": "uint8", "shape": [n, h, w, 3], "data": px},
            "orig_sizes": {"dtype": "int64", "shape": [n, 2], "data": flat_sizes},
        }),
    );
    let k = scores.len() / n;
    let ds = common::max_diff(&res["outputs"]["scores"], &[n, k], &scores);
    let side = 640.0f32;
    let db = common::max_diff(&res["outputs"]["boxes"], &[n, k, 4], &boxes) / side;
    let got_labels: Vec<i64> = res["outputs"]["labels"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let same_labels = got_labels == labels;
    eprintln!(
        "{tag}: {} op types, scores {ds:.2e}, boxes/side {db:.2e}, labels identical: {same_labels}",
        res["ops"].as_array().map_or(0, |a| a.len())
    );
    assert!(ds <= 1e-4 && db <= 1e-4, "{tag}: scores {ds} boxes {db}");
    assert!(same_labels, "{tag}: labels differ");
    assert_eq!(res["domains"], serde_json::json!([""]), "standard ops only");
    let ops: Vec<&str> = res["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        !ops.iter().any(|o| o.contains("NonMaxSuppression")),
        "{ops:?}"
    );
}

#[test]
fn full_graph_matches_burn_on_hf_fixtures() {
    let dev = Device::flex();
    let m = common::load_hf_model("ddetr_r50", &dev);
    full_graph_parity(&m, 128, 160, 2, "ddetr_r50");
    let m = common::load_hf_model("ddetr_r18", &dev);
    full_graph_parity(&m, 160, 128, 2, "ddetr_r18");
}

#[test]
fn full_graph_matches_burn_for_tiny_at_batch_1_and_3() {
    let dev = Device::flex();
    dev.seed(7);
    let cfg = codetr_core::model::DetectorConfig::tiny();
    let m = cfg.init(&dev).unwrap();
    full_graph_parity(&m, 256, 256, 1, "tiny b1");
    full_graph_parity(&m, 256, 256, 3, "tiny b3");
}

#[test]
fn group_norm_backbone_exports_and_matches_burn() {
    let dev = Device::flex();
    dev.seed(9);
    let mut cfg = codetr_core::model::DetectorConfig::tiny();
    cfg.backbone.resnet_mut().unwrap().norm = codetr_core::model::backbone::BackboneNorm::GroupNorm;
    cfg.input_size = 128;
    let m = cfg.init(&dev).unwrap();
    full_graph_parity(&m, 128, 128, 2, "tiny group_norm backbone");
}

#[test]
fn dynamic_size_graph_matches_burn_at_several_sizes_with_both_lowerings() {
    use codetr_model::Msda;
    let dev = Device::flex();
    dev.seed(11);
    let mut cfg = codetr_core::model::DetectorConfig::tiny();
    cfg.input_size = 128;
    let m = cfg.init(&dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for lowering in [Msda::GridSample, Msda::Gather] {
        let g = m.emit(None, lowering).unwrap();
        let path = dir.path().join(format!("dyn-{lowering:?}.onnx"));
        let proto = g.finish(17, "codetr-test", vec![]);
        let graph = proto.graph.as_ref().unwrap();
        // TensorRT refuses ScatterND into shape tensors; a dynamic graph must not need one.
        assert!(!graph.node.iter().any(|n| n.op_type == "ScatterND"));
        write(&proto, &path).unwrap();
        // one graph, three input sizes (square, landscape, portrait; not multiples of 32)
        for (h, w, n) in [(128, 128, 2), (96, 160, 1), (200, 136, 2)] {
            graph_parity(
                &m,
                &path,
                h,
                w,
                n,
                &format!("tiny dynamic {lowering:?} {h}x{w}"),
            );
        }
    }
}
