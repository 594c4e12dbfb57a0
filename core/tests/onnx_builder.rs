//! The ONNX builder and writer against the reference tooling: a small graph using the
//! preprocessing and postprocessing ops the exporter needs passes `onnx.checker` (full check)
//! and runs in ONNX Runtime with the values computed here by hand; output is byte-identical
//! across builds. Needs `CODETR_PYTHON` (set by `make test`).

use std::process::Command;

use codetr_core::onnx::builder::{Attr, encode, write};
use codetr_core::onnx::{Dim, ElemType, GraphBuilder};

fn python() -> String {
    std::env::var("CODETR_PYTHON").unwrap_or_else(|_| {
        panic!(
            "CODETR_PYTHON is not set: run `make test` (it creates .venv with onnx + onnxruntime)"
        )
    })
}

/// uint8 NHWC [N, 2, 2, 3] → float → NCHW → (x − mean)/std → 1×1 conv (3→2) → ReLU →
/// flatten [N, 8] → TopK(3) → (values, indices).
fn build() -> codetr_core::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("toy");
    let n = Dim::Named("N".into());
    let x = g
        .input(
            "images",
            ElemType::U8,
            &[n.clone(), Dim::Fixed(2), Dim::Fixed(2), Dim::Fixed(3)],
        )
        .unwrap();
    let f = g.node("Cast", &[&x], vec![("to", Attr::Int(1))]);
    let t = g.node(
        "Transpose",
        &[&f],
        vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))],
    );
    let mean = g.init_f32("mean", &[1, 3, 1, 1], &[10.0, 20.0, 30.0]);
    let std = g.init_f32("std", &[1, 3, 1, 1], &[2.0, 4.0, 5.0]);
    let s = g.node("Sub", &[&t, &mean], vec![]);
    let z = g.node("Div", &[&s, &std], vec![]);
    let w = g.init_f32("w", &[2, 3, 1, 1], &[1.0, -1.0, 0.5, 0.25, 0.5, -2.0]);
    let b = g.init_f32("b", &[2], &[0.1, -0.2]);
    let c = g.node(
        "Conv",
        &[&z, &w, &b],
        vec![("kernel_shape", Attr::Ints(vec![1, 1]))],
    );
    let r = g.node("Relu", &[&c], vec![]);
    let shape = g.ints(&[0, -1]);
    let flat = g.node("Reshape", &[&r, &shape], vec![]);
    let k = g.ints(&[3]);
    let tk = g.node_n("TopK", &[&flat, &k], vec![("axis", Attr::Int(1))], 2);
    g.output(&tk[0], "values", ElemType::F32, &[n.clone(), Dim::Fixed(3)])
        .unwrap();
    g.output(&tk[1], "indices", ElemType::I64, &[n, Dim::Fixed(3)])
        .unwrap();
    g.finish(
        17,
        "codetr-test",
        vec![("codetr.test".into(), "yes".into())],
    )
}

fn reference(px: &[u8], n: usize) -> (Vec<f32>, Vec<i64>) {
    let mean = [10.0f32, 20.0, 30.0];
    let std = [2.0f32, 4.0, 5.0];
    let w = [[1.0f32, -1.0, 0.5], [0.25, 0.5, -2.0]];
    let b = [0.1f32, -0.2];
    let mut vals = vec![];
    let mut idx = vec![];
    for i in 0..n {
        // [C_out=2, H=2, W=2] flattened row-major
        let mut flat = [0f32; 8];
        for o in 0..2 {
            for y in 0..2 {
                for x in 0..2 {
                    let mut acc = b[o];
                    for c in 0..3 {
                        let v = f32::from(px[((i * 2 + y) * 2 + x) * 3 + c]);
                        acc += w[o][c] * (v - mean[c]) / std[c];
                    }
                    flat[(o * 2 + y) * 2 + x] = acc.max(0.0);
                }
            }
        }
        let mut order: Vec<usize> = (0..8).collect();
        order.sort_by(|&a, &b| flat[b].total_cmp(&flat[a]).then(a.cmp(&b)));
        for &j in &order[..3] {
            vals.push(flat[j]);
            idx.push(j as i64);
        }
    }
    (vals, idx)
}

#[test]
fn checker_and_onnxruntime_agree_with_a_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("toy.onnx");
    let model = build();
    write(&model, &path).unwrap();
    let n = 3;
    let px: Vec<u8> = (0..n * 12).map(|i| ((i * 37 + 11) % 256) as u8).collect();
    let inputs = serde_json::json!({
        "images": {"dtype": "uint8", "shape": [n, 2, 2, 3], "data": px},
    });
    let ip = dir.path().join("in.json");
    std::fs::write(&ip, inputs.to_string()).unwrap();
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/python/onnx_run.py"
        ))
        .arg(&path)
        .arg(&ip)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnx_run.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (vals, idx) = reference(&px, n);
    let got_v: Vec<f64> = res["outputs"]["values"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let got_i: Vec<i64> = res["outputs"]["indices"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    for (a, b) in got_v.iter().zip(&vals) {
        assert!((a - f64::from(*b)).abs() < 1e-5, "{got_v:?} vs {vals:?}");
    }
    assert_eq!(got_i, idx);
    assert_eq!(res["metadata"]["codetr.test"], "yes");
    assert_eq!(res["domains"], serde_json::json!([""]), "no custom domain");
}

#[test]
fn same_graph_same_bytes_and_no_partial_files() {
    assert_eq!(encode(&build()), encode(&build()));
    // an unwritable destination is an error and leaves nothing behind
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("missing-dir").join("m.onnx");
    assert!(write(&build(), &bad).is_err());
    assert!(!dir.path().join("missing-dir").exists());
    // The streamed file is `encode`'s bytes, with every part present (doc strings, a graph
    // name, value infos, metadata) and without a graph.
    let mut m = build();
    m.doc_string = "a doc".into();
    if let Some(g) = m.graph.as_mut() {
        g.doc_string = "graph doc".into();
        g.value_info = g.output.clone();
    }
    let p = dir.path().join("m.onnx");
    let n = write(&m, &p).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(bytes, encode(&m));
    assert_eq!(n, bytes.len() as u64);
    m.graph = None;
    write(&m, &p).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), encode(&m));
}

#[test]
fn duplicate_value_names_are_refused() {
    let mut g = GraphBuilder::new("dup");
    g.input("x", ElemType::F32, &[Dim::Fixed(1)]).unwrap();
    assert!(g.input("x", ElemType::F32, &[Dim::Fixed(1)]).is_err());
}
