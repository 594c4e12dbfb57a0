//! The intermediate-size bound (issue: paper-r50 at 800² crashed ONNX Runtime's CUDA provider
//! at batch 8 with a 2.2e9-element MSDA tensor): every tensor of the exported `paper-r50`
//! graph stays under 2^31 elements at batch 8 and 800², with both MSDA lowerings, proven from
//! the graph's inferred shapes; and those shapes equal onnx's own shape inference (with data
//! propagation), the independent reference. Needs `CODETR_PYTHON`.

use std::collections::HashMap;
use std::path::Path;

use codetr_core::model::DetectorConfig;
use codetr_core::onnx::proto::ModelProto;
use codetr_export::shapes::{self, ELEMENT_LIMIT};
use codetr_export::{ExportOptions, export};
use codetr_model::Msda;
use prost::Message;

mod common;
use common::{init_checkpoint, python_json};

/// onnx.shape_inference's shapes of `model` at `batch` (values it could resolve).
fn onnx_shapes(model: &Path, batch: u64) -> HashMap<String, Vec<i64>> {
    let batch = batch.to_string();
    python_json("onnx_shapes.py", &[model.as_os_str(), batch.as_ref()])
}

/// Ours equal onnx's on every value onnx resolved, and onnx resolved most of them (a
/// comparison over nothing proves nothing).
fn same_as_onnx(path: &Path, batch: u64, hw: [usize; 2]) {
    let proto = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let ours = shapes::infer(&proto, batch, hw).unwrap();
    let theirs = onnx_shapes(path, batch);
    let mut compared = 0;
    for (name, shape) in &ours {
        if let Some(t) = theirs.get(name) {
            assert_eq!(shape, t, "{}: value {name}", path.display());
            compared += 1;
        }
    }
    assert!(
        compared * 10 >= ours.len() * 9,
        "onnx resolved only {compared} of {} values",
        ours.len()
    );
}

#[test]
fn paper_r50_at_800_keeps_every_tensor_under_2_31_at_batch_8() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DetectorConfig::paper_r50();
    assert_eq!(cfg.input_size, 800);
    let ckpt = dir.path().join("paper.ckpt");
    init_checkpoint(&cfg, &ckpt, 3);
    for msda in [Msda::GridSample, Msda::Gather] {
        let out = dir.path().join(format!("paper-{msda:?}.onnx"));
        let report = export(&ExportOptions {
            msda,
            ..ExportOptions::new(&ckpt, &out)
        })
        .unwrap();
        let b = &report.intermediate;
        eprintln!("paper-r50 {msda:?}: {b:?}");
        assert_eq!(b.input_size, [800, 800]);
        assert!(b.fits(8), "{msda:?}: {b:?}");
        let proto = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
        let at8 = shapes::largest(&proto, 8, [800, 800]).unwrap();
        assert!(at8.elements < ELEMENT_LIMIT, "{msda:?} at batch 8: {at8:?}");
        // The bound is tight: one more image than max_batch crosses it.
        let over = shapes::largest(&proto, b.max_batch + 1, [800, 800]).unwrap();
        assert!(over.elements >= ELEMENT_LIMIT, "{over:?}");
        same_as_onnx(&out, 2, [800, 800]);
    }
}

#[test]
fn tiny_shapes_equal_onnx_shape_inference_fixed_fp16_and_dynamic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DetectorConfig::tiny();
    let ckpt = dir.path().join("tiny.ckpt");
    init_checkpoint(&cfg, &ckpt, 5);
    let side = cfg.input_size as usize;
    for msda in [Msda::GridSample, Msda::Gather] {
        for (fp16, dynamic_size) in [(false, false), (true, false), (false, true)] {
            let out = dir
                .path()
                .join(format!("t-{msda:?}-{fp16}-{dynamic_size}.onnx"));
            let r = export(&ExportOptions {
                msda,
                fp16,
                dynamic_size,
                ..ExportOptions::new(&ckpt, &out)
            })
            .unwrap();
            assert!(r.intermediate.max_batch > 64, "{:?}", r.intermediate);
            if dynamic_size {
                // onnx's inference needs the size fixed in the input; ours substitutes it.
                let proto = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
                let ours = shapes::infer(&proto, 3, [side, side]).unwrap();
                let fixed = dir.path().join(format!("t-{msda:?}-fixed.onnx"));
                let fixed_proto =
                    ModelProto::decode(std::fs::read(&fixed).unwrap().as_slice()).unwrap();
                let theirs = shapes::infer(&fixed_proto, 3, [side, side]).unwrap();
                // Same outputs and the same largest tensor as the fixed-size graph.
                let last = |v: &[(String, Vec<i64>)]| {
                    v.iter()
                        .rev()
                        .take(3)
                        .map(|x| x.1.clone())
                        .collect::<Vec<_>>()
                };
                assert_eq!(last(&ours), last(&theirs));
            } else {
                let name = if fp16 { "fp16" } else { "fixed" };
                std::fs::copy(&out, dir.path().join(format!("t-{msda:?}-{name}.onnx"))).unwrap();
                same_as_onnx(&out, 3, [side, side]);
            }
        }
    }
}

/// A dynamic-size letterbox graph records its batch bound at its landscape and portrait
/// canvases (by default those of its limits and the same rounded up to its coarsest stride;
/// `bound_sizes` replaces them), with that stride (format version 5);
/// each equals the bound of a graph exported fixed at that size (constant shapes, not the
/// symbolic ones). Bound sizes on a fixed graph, twice, or out of range are refused.
#[test]
fn a_dynamic_graph_records_its_bounds_at_the_sizes_it_is_served_at() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("tiny.ckpt");
    init_checkpoint(&DetectorConfig::tiny(), &ckpt, 5);
    let letterbox = |out: &str| ExportOptions {
        resize: codetr_model::Resize::Letterbox,
        letterbox_limits: Some([192, 320]),
        ..ExportOptions::new(&ckpt, dir.path().join(out))
    };
    let meta = |out: &str| {
        let proto =
            ModelProto::decode(std::fs::read(dir.path().join(out)).unwrap().as_slice()).unwrap();
        codetr_model::ModelMetadata::from_props(
            proto
                .metadata_props
                .iter()
                .map(|p| (p.key.as_str(), p.value.as_str())),
        )
        .unwrap()
    };
    let fixed_bound = |hw: [u32; 2]| {
        let out = format!("fixed-{}x{}.onnx", hw[0], hw[1]);
        let r = export(&ExportOptions {
            input_size: Some(hw),
            ..letterbox(&out)
        })
        .unwrap();
        assert!(meta(&out).max_batch_at.is_empty());
        r.intermediate.max_batch
    };
    let r = export(&ExportOptions {
        dynamic_size: true,
        ..letterbox("dyn.onnx")
    })
    .unwrap();
    let m = meta("dyn.onnx");
    assert_eq!(m.format_version, 5);
    assert_eq!(m.size_multiple, Some(64), "tiny's coarsest stride");
    let at: Vec<([u32; 2], u64)> = m
        .max_batch_at
        .iter()
        .map(|b| (b.input_size, b.max_batch))
        .collect();
    assert_eq!(
        at.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![[192, 320], [320, 192]]
    );
    assert_eq!(r.bounds_at.len(), 2);
    for (hw, n) in at {
        assert_eq!(n, fixed_bound(hw), "{hw:?}");
        assert_eq!(m.max_batch_for(hw), Some(n));
    }
    // Limits off the stride: their canvases and the aligned ones.
    export(&ExportOptions {
        dynamic_size: true,
        letterbox_limits: Some([160, 300]),
        ..letterbox("off.onnx")
    })
    .unwrap();
    let m = meta("off.onnx");
    assert_eq!(
        m.max_batch_at
            .iter()
            .map(|b| b.input_size)
            .collect::<Vec<_>>(),
        vec![[160, 300], [300, 160], [192, 320], [320, 192]]
    );
    assert_eq!(m.aligned_size([160, 300]), Some([192, 320]));
    // Given sizes replace the default.
    export(&ExportOptions {
        dynamic_size: true,
        bound_sizes: vec![[256, 256]],
        ..letterbox("given.onnx")
    })
    .unwrap();
    let m = meta("given.onnx");
    assert_eq!(m.max_batch_at.len(), 1);
    assert_eq!(m.max_batch_for([256, 256]), Some(fixed_bound([256, 256])));
    // Without limits and sizes a dynamic graph records none and stays at its old version.
    export(&ExportOptions {
        dynamic_size: true,
        letterbox_limits: None,
        ..letterbox("plain.onnx")
    })
    .unwrap();
    let m = meta("plain.onnx");
    assert!(m.max_batch_at.is_empty());
    assert_eq!(m.format_version, 5, "a letterbox graph records its stride");
    for (opts, want) in [
        (
            ExportOptions {
                bound_sizes: vec![[192, 320]],
                ..letterbox("bad1.onnx")
            },
            "--dynamic-size",
        ),
        (
            ExportOptions {
                dynamic_size: true,
                bound_sizes: vec![[192, 320], [192, 320]],
                ..letterbox("bad2.onnx")
            },
            "given twice",
        ),
        (
            ExportOptions {
                dynamic_size: true,
                bound_sizes: vec![[8, 320]],
                ..letterbox("bad3.onnx")
            },
            "8x320",
        ),
    ] {
        let e = export(&opts).unwrap_err().to_string();
        assert!(e.contains(want), "{want:?} not in {e}");
        assert!(!opts.out.exists(), "{}", opts.out.display());
    }
}
