//! The drift bench's graph editing against an independent reader (the `onnx` Python package)
//! and ONNX Runtime, on the committed micro graph.

mod common;

use codetr_serve::config::RuntimeConfig;
use codetr_serve::drift::{self, Values};
use codetr_serve::engine;
use common::{fixtures, ort_library, run_python};

/// `read_graph` sees what `onnx` sees; `with_outputs` adds exactly the named outputs and
/// keeps every other field (the edited model, less the added outputs, serialises to the
/// original's bytes in `onnx`); ONNX Runtime runs the edited graph, returns every added output,
/// and gives the contract's outputs the original graph gives.
#[test]
fn exposed_outputs_agree_with_the_onnx_library_and_run_in_onnx_runtime() {
    let path = fixtures().join("micro.onnx");
    let bytes = std::fs::read(&path).unwrap();
    let (nodes, outputs) = drift::read_graph(&bytes).unwrap();
    let names = drift::exposable(&nodes, &outputs, &[]);
    assert!(names.len() > 100, "{} outputs to expose", names.len());
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("edited.onnx");
    std::fs::write(&edited, drift::with_outputs(&bytes, &names).unwrap()).unwrap();

    let ours = serde_json::json!({
        "nodes": nodes.iter().map(|n| (&n.name, &n.op_type, &n.inputs, &n.outputs)).collect::<Vec<_>>(),
        "outputs": outputs,
        "added": names,
    });
    let check = r#"
import json, sys, onnx
ours = json.loads(sys.argv[3])
m = onnx.load(sys.argv[1])
nodes = [[n.name, n.op_type, list(n.input), list(n.output)] for n in m.graph.node]
assert nodes == ours["nodes"], "node lists differ"
assert [o.name for o in m.graph.output] == ours["outputs"], "outputs differ"
e = onnx.load(sys.argv[2])
got = [o.name for o in e.graph.output]
assert got == ours["outputs"] + ours["added"], got[:8]
del e.graph.output[len(ours["outputs"]):]
assert e.SerializeToString() == m.SerializeToString(), "a field other than the outputs changed"
print("ok")
"#;
    let out = run_python(&[
        "-c".as_ref(),
        check.as_ref(),
        path.as_os_str(),
        edited.as_os_str(),
        ours.to_string().as_ref(),
    ]);
    assert_eq!(String::from_utf8_lossy(&out).trim(), "ok");

    let env = engine::environment(Some(&ort_library())).unwrap();
    let cfg = RuntimeConfig {
        intra_threads: 1,
        ..RuntimeConfig::default()
    };
    let (mut plain, _, _) = engine::open(env, &path, &cfg, &[2], None).unwrap();
    let info = engine::inspect(&plain, &path, &[]).unwrap();
    let hw = info.input_sizes[0];
    let letterbox = info.meta.resize == codetr_model::Resize::Letterbox;
    let valid = letterbox.then_some(&[240i64, 256, 200, 256][..]);
    let n = 2;
    let pixels: Vec<u8> = (0..n * hw[0] as usize * hw[1] as usize * 3)
        .map(|i| ((i * 31 + i / 7) % 253) as u8)
        .collect();
    let orig = [300, 500, 240, 320];
    let a = drift::run(&mut plain, &pixels, &orig, valid, hw, &outputs).unwrap();
    let (mut exposed, _, _) = engine::open(env, &edited, &cfg, &[2], None).unwrap();
    let all: Vec<String> = outputs.iter().chain(&names).cloned().collect();
    let b = drift::run(&mut exposed, &pixels, &orig, valid, hw, &all).unwrap();
    let missing: Vec<&String> = all.iter().filter(|x| !b.contains_key(*x)).collect();
    assert!(missing.is_empty(), "outputs not returned: {missing:?}");
    for name in &outputs {
        let d = drift::diff(&a[name], &b[name]).unwrap();
        // Exposing outputs only keeps ONNX Runtime from fusing across them: float error.
        assert!(d.rel <= 1e-5, "{name}: {d:?}");
    }
    // Types come back as the graph computes them: float activations, int64 shapes.
    assert!(b.values().any(|v| matches!(v, Values::F32(_))));
    assert!(b.values().any(|v| matches!(v, Values::I64(_))));
    // The same inputs through the same provider: every node agrees, and nothing gains.
    let mut again = engine::open(env, &edited, &cfg, &[2], None).unwrap().0;
    let c = drift::run(&mut again, &pixels, &orig, valid, hw, &all).unwrap();
    let diffs = all
        .iter()
        .filter_map(|x| Some((x.clone(), drift::diff(&b[x], &c[x])?)))
        .collect();
    let per_node = drift::attribute(&nodes, &diffs);
    assert!(per_node.len() > 100);
    assert!(per_node.iter().all(|n| n.rel == 0.0 && n.gain == 0.0));
}

/// An fp16 graph's tensors are read as their values (f16 → f32), and two graphs that name
/// their tensors alike compare tensor by tensor: the same small computation written by the
/// `onnx` package once in fp32 and once in fp16 (as the exporter's `--fp16` rewrite does:
/// same names, fp16 in between, fp32 at the outputs) differs by fp16 rounding, no more.
#[test]
fn fp16_tensors_are_read_and_compared_with_the_fp32_graph_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let make = r#"
import sys, onnx
from onnx import TensorProto as T, helper as h
def graph(ft, path):
    nodes = [
        h.make_node("Cast", ["images"], ["x"], to=ft, name="to_float"),
        h.make_node("Mul", ["x", "k"], ["scaled"], name="scale"),
        h.make_node("ReduceMean", ["scaled"], ["mean"], keepdims=0, axes=[1, 2], name="mean"),
        h.make_node("Cast", ["mean"], ["scores"], to=T.FLOAT, name="to_fp32"),
        h.make_node("Cast", ["orig_sizes"], ["labels"], to=T.INT64, name="labels"),
    ]
    g = h.make_graph(nodes, "g",
        [h.make_tensor_value_info("images", T.UINT8, ["N", 4, 4, 3]),
         h.make_tensor_value_info("orig_sizes", T.INT64, ["N", 2])],
        [h.make_tensor_value_info("scores", T.FLOAT, ["N", 3]),
         h.make_tensor_value_info("labels", T.INT64, ["N", 2])],
        [h.make_tensor("k", ft, [], [0.1])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    onnx.save(m, path)
graph(T.FLOAT, sys.argv[1] + "/fp32.onnx")
graph(T.FLOAT16, sys.argv[1] + "/fp16.onnx")
"#;
    run_python(&["-c".as_ref(), make.as_ref(), dir.path().as_os_str()]);
    let env = engine::environment(Some(&ort_library())).unwrap();
    let cfg = RuntimeConfig {
        intra_threads: 1,
        ..RuntimeConfig::default()
    };
    let pixels: Vec<u8> = (0..2 * 4 * 4 * 3).map(|i| (i * 37 % 251) as u8).collect();
    let orig = [4, 4, 4, 4];
    let mut out = Vec::new();
    for name in ["fp32.onnx", "fp16.onnx"] {
        let path = dir.path().join(name);
        let bytes = std::fs::read(&path).unwrap();
        let (nodes, outputs) = drift::read_graph(&bytes).unwrap();
        let names = drift::exposable(&nodes, &outputs, &[]);
        assert_eq!(names, ["x", "scaled", "mean"]);
        let edited = dir.path().join(format!("exposed-{name}"));
        std::fs::write(&edited, drift::with_outputs(&bytes, &names).unwrap()).unwrap();
        let mut s = engine::open(env, &edited, &cfg, &[2], None).unwrap().0;
        let all: Vec<String> = outputs.iter().chain(&names).cloned().collect();
        out.push((
            nodes,
            drift::run(&mut s, &pixels, &orig, None, [4, 4], &all).unwrap(),
        ));
    }
    let (nodes, a) = &out[0];
    let b = &out[1].1;
    // The fp16 run's `scaled` is read: its values, not "Other".
    let Values::F32(scaled16) = &b["scaled"] else {
        panic!("fp16 tensor not read: {:?}", b["scaled"]);
    };
    // the largest pixel × 0.1, to within fp16 rounding (spacing ≤ 2^-5 below 32)
    let (at, &p) = pixels.iter().enumerate().max_by_key(|(_, p)| **p).unwrap();
    let want = f32::from(p) * 0.1;
    assert!(
        (scaled16[at] - want).abs() < 0.05,
        "{} vs {want}",
        scaled16[at]
    );
    let diffs: std::collections::HashMap<String, drift::TensorDiff> = ["x", "scaled", "mean"]
        .iter()
        .map(|&n| (n.to_string(), drift::diff(&a[n], &b[n]).unwrap()))
        .collect();
    // Integer pixels are exact in fp16 (< 2048); scaling by 0.1 (itself rounded) is not.
    assert_eq!(diffs["x"].rel, 0.0);
    assert!(
        diffs["scaled"].rel > 1e-5 && diffs["scaled"].rel < 2e-3,
        "{:?}",
        diffs["scaled"]
    );
    let per_node = drift::attribute(nodes, &diffs);
    let scale = per_node.iter().find(|n| n.name == "scale").unwrap();
    assert!(scale.gain > 100.0, "the Mul adds the fp16 error: {scale:?}");
    let cast = per_node.iter().find(|n| n.name == "to_float").unwrap();
    assert_eq!(cast.rel, 0.0);
}
