//! Module emitters against Burn: each lowered piece of the detector, run in ONNX Runtime,
//! matches the Burn module on the same input to 1e-4 (HF-fixture weights: random BatchNorm
//! statistics to fold, conv biases, GroupNorm). Needs `CODETR_PYTHON`.

mod common;

use burn::tensor::Device;
use codetr_train::model::detector::pixels_to_tensor;
use codetr_train::onnx::builder::write;
use codetr_train::onnx::{Dim, ElemType, GraphBuilder};

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
        let feats = model.backbone.emit(&mut g, &z).unwrap();
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

#[test]
fn encoder_with_grid_sample_msda_matches_burn() {
    use codetr_train::model::msda::MsdaLowering;
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
        let memory = model.encoder.forward(src, pos, &shapes);

        let mut g = GraphBuilder::new("encoder");
        let dims = [
            Dim::Named("N".into()),
            Dim::Fixed(h as i64),
            Dim::Fixed(w as i64),
            Dim::Fixed(3),
        ];
        let images = g.input("images", ElemType::U8, &dims).unwrap();
        let (src, pos) = model.emit_features(&mut g, &images, &shapes).unwrap();
        let mem = model
            .encoder
            .emit(&mut g, &src, &pos, &shapes, MsdaLowering::GridSample)
            .unwrap();
        let [_, s, d] = memory.dims();
        let od = [
            Dim::Named("N".into()),
            Dim::Fixed(s as i64),
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
        eprintln!("{name} encoder memory: max |onnx − burn| = {diff:.2e}");
        assert!(diff <= 1e-4, "{name}: {diff}");
    }
}
