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

/// One MSDA block alone, both lowerings, against Burn's host kernel (itself checked against
/// the naive loops in model_msda.rs), with reference points and offsets that put many
/// samples outside the maps and on their edges: the lowerings' corner validity and clamping
/// are what this exercises, which a whole detector's mostly interior samples barely do.
#[test]
fn msda_block_lowerings_match_burn_where_samples_leave_the_map() {
    use burn::module::Param;
    use burn::tensor::{Tensor, TensorData};
    use codetr_core::model::msda::{EmitReference, MsDeformAttnConfig, MsdaImpl, Reference};
    use codetr_core::onnx::Levels;
    use codetr_model::Msda;
    let dev = Device::flex();
    let (d, h, l, p) = (32, 4, 3, 3);
    let shapes = [[6usize, 7usize], [3, 4], [1, 2]];
    let (n, q) = (2, 24);
    let s: usize = shapes.iter().map(|[a, b]| a * b).sum();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = |count: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                lo + (hi - lo) * ((state >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    };
    let mut attn = MsDeformAttnConfig {
        d_model: d,
        num_heads: h,
        num_levels: l,
        num_points: p,
        imp: MsdaImpl::Host,
    }
    .init(&dev)
    .unwrap();
    // offsets of several pixels either way and uneven attention, instead of the init's zeros
    let so = h * l * p * 2;
    attn.sampling_offsets.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(uniform(d * so, -0.6, 0.6), [d, so]),
        &dev,
    ));
    attn.attention_weights.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(uniform(d * h * l * p, -0.5, 0.5), [d, h * l * p]),
        &dev,
    ));
    let query = uniform(n * q * d, -1.0, 1.0);
    let value = uniform(n * s * d, -1.0, 1.0);
    // ~29 % of the coordinates (half the points) lie outside [0, 1]; four points sit on corners
    let mut refs = uniform(n * q * 2, -0.2, 1.2);
    refs[..8].copy_from_slice(&[0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
    let t3 = |v: &[f32], dims: [usize; 3]| {
        Tensor::<3>::from_data(TensorData::new(v.to_vec(), dims), &dev)
    };
    let want = attn.forward(
        t3(&query, [n, q, d]),
        &Reference::Points(t3(&refs, [n, q, 2])),
        t3(&value, [n, s, d]),
        &shapes,
        None,
    );
    let want_dims = want.dims();
    let want: Vec<f32> = want.into_data().try_to_vec().unwrap();
    let outside = refs.iter().filter(|c| !(0.0..=1.0).contains(*c)).count();
    assert!(
        outside > refs.len() / 5,
        "{outside} of {} coordinates outside",
        refs.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let batch = Dim::Named("N".into());
    let fixed = |k: usize| Dim::Fixed(k as i64);
    for lowering in [Msda::GridSample, Msda::Gather] {
        let mut g = GraphBuilder::new("msda");
        let qi = g
            .input("query", ElemType::F32, &[batch.clone(), fixed(q), fixed(d)])
            .unwrap();
        let ri = g
            .input(
                "reference",
                ElemType::F32,
                &[batch.clone(), fixed(q), fixed(2)],
            )
            .unwrap();
        let vi = g
            .input("value", ElemType::F32, &[batch.clone(), fixed(s), fixed(d)])
            .unwrap();
        let levels = Levels::fixed(&mut g, &shapes);
        let out = attn
            .emit(
                &mut g,
                &qi,
                EmitReference::Points(&ri),
                &vi,
                &levels,
                lowering,
                None,
            )
            .unwrap();
        g.output(
            &out,
            "out",
            ElemType::F32,
            &[batch.clone(), fixed(q), fixed(d)],
        )
        .unwrap();
        let path = dir.path().join(format!("msda-{lowering:?}.onnx"));
        write(&g.finish(17, "codetr-test", vec![]), &path).unwrap();
        let f32s = |v: &[f32], dims: [usize; 3]| serde_json::json!({"dtype": "float32", "shape": dims, "data": v});
        let res = common::onnx_run(
            &path,
            &serde_json::json!({
                "query": f32s(&query, [n, q, d]),
                "reference": f32s(&refs, [n, q, 2]),
                "value": f32s(&value, [n, s, d]),
            }),
        );
        let diff = common::max_diff(&res["outputs"]["out"], &want_dims, &want);
        eprintln!("MSDA block, {lowering:?} lowering: max |onnx − burn| = {diff:.2e}");
        assert!(diff <= 1e-5, "{lowering:?}: {diff}");
    }
}
