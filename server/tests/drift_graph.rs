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
