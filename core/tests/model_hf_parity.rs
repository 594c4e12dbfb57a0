//! Parity with an independent implementation: HF transformers' Deformable DETR (two-stage, box
//! refinement) with random weights. `tests/reference/make_hf_fixtures.py` wrote the weights
//! (under our module paths, PyTorch layout) and every intermediate output for fixed images;
//! here the same weights go into our modules and each intermediate must match to 1e-4.
//!
//! The DINO-only parts (mixed query selection, anchor-sine query position, decoder final norm,
//! look-forward-twice decoding) have no HF counterpart: the script computes them from the
//! official Co-DINO formulas around HF's own decoder layers (see its docstring).
//!
//! `cargo nextest run -p codetr-core --test model_hf_parity --no-capture` prints the table
//! (`--features wgpu` adds the same parity on the wgpu device).

mod common;

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use codetr_core::model::Detector;
use codetr_core::model::detector::pixels_to_tensor;
use codetr_core::model::encoder::token_centres;
use codetr_core::model::msda::Reference;
use codetr_core::model::query_selection::token_proposals;

const TOL: f32 = 1e-4;

/// The reference tensors of one fixture: name → (shape, values as f32 or i64).
struct Outputs {
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ints: HashMap<String, (Vec<usize>, Vec<i64>)>,
    pixels: (Vec<usize>, Vec<u8>),
}

fn read_outputs(name: &str) -> Outputs {
    let bytes = std::fs::read(common::fixture(&format!("{name}.outputs.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Outputs {
        f32s: HashMap::new(),
        ints: HashMap::new(),
        pixels: (vec![], vec![]),
    };
    for (k, v) in st.tensors() {
        let shape = v.shape().to_vec();
        let data = v.data();
        match v.dtype() {
            safetensors::Dtype::F32 => {
                let vals = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                out.f32s.insert(k, (shape, vals));
            }
            safetensors::Dtype::I64 => {
                let vals = data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                out.ints.insert(k, (shape, vals));
            }
            safetensors::Dtype::U8 => out.pixels = (shape, data.to_vec()),
            other => panic!("{k}: unexpected dtype {other:?}"),
        }
    }
    out
}

fn load_model(name: &str, dev: &Device) -> Detector {
    common::load_hf_model(name, dev)
}

/// Max |ours − reference| after checking the shape; records a row of the table.
struct Table {
    name: String,
    rows: Vec<(String, f32, f32)>,
}

impl Table {
    fn check<const D: usize>(&mut self, key: &str, ours: Tensor<D>, refs: &Outputs) {
        self.check_in(key, ours, refs, 1.0)
    }

    /// As `check`, with differences divided by `unit` (pixel boxes: the image side, so the
    /// bound is on the normalised coordinates f32 carries, not on 640× their rounding).
    fn check_in<const D: usize>(&mut self, key: &str, ours: Tensor<D>, refs: &Outputs, unit: f32) {
        let (shape, want) = refs
            .f32s
            .get(key)
            .unwrap_or_else(|| panic!("{}: no reference `{key}`", self.name));
        assert_eq!(
            &ours.dims().to_vec(),
            shape,
            "{}: shape of {key}",
            self.name
        );
        let got: Vec<f32> = ours.into_data().convert::<f32>().try_to_vec().unwrap();
        let mut max = 0f32;
        let mut scale = 0f32;
        for (a, b) in got.iter().zip(want) {
            assert!(a.is_finite(), "{}: {key} has a non-finite value", self.name);
            max = max.max((a - b).abs() / unit);
            scale = scale.max(b.abs());
        }
        self.rows.push((key.to_string(), max, scale));
    }

    fn finish(self) {
        eprintln!(
            "\n{}: module → max |ours − HF| (max |HF|); post.boxes ÷ the largest image side",
            self.name
        );
        for (k, d, s) in &self.rows {
            eprintln!("  {k:<24} {d:.2e}  ({s:.3})");
        }
        let bad: Vec<_> = self
            .rows
            .iter()
            .filter(|r| r.1.is_nan() || r.1 > TOL)
            .collect();
        assert!(bad.is_empty(), "{}: above {TOL}: {bad:?}", self.name);
    }
}

fn to_tensor<const D: usize>(refs: &Outputs, key: &str, dev: &Device) -> Tensor<D> {
    let (shape, v) = &refs.f32s[key];
    Tensor::from_data(TensorData::new(v.clone(), shape.clone()), dev)
}

fn parity(name: &str, dev: &Device) {
    let dev = dev.clone();
    let model = load_model(name, &dev);
    let refs = read_outputs(name);
    let mut t = Table {
        name: format!("{name} on {dev:?}"),
        rows: vec![],
    };
    let (pshape, pix) = &refs.pixels;
    let (b, h, w) = (pshape[0], pshape[1], pshape[2]);
    let images = pixels_to_tensor(pix, b, h, w, &dev).unwrap();

    // Backbone and neck.
    let feats = model.backbone.forward(model.normalize(images.clone()));
    for (i, f) in feats.iter().enumerate() {
        t.check(&format!("backbone.{i}"), f.clone(), &refs);
    }
    for (l, m) in model.neck.forward(feats).into_iter().enumerate() {
        t.check(&format!("neck.{l}"), m, &refs);
    }

    // Flattened tokens, sine position + level embedding.
    let (src, pos, shapes) = model.features(images.clone());
    t.check("encoder.0", src.clone(), &refs);
    t.check("pos", pos.clone(), &refs);

    // Encoder, layer by layer where the fixture has every layer, and as a whole.
    let n_enc = model.encoder.layers.len();
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let centres = Reference::Points(token_centres(&shapes, &dev).expand([b, s, 2]));
    let mut x = src.clone();
    for (i, layer) in model.encoder.layers.iter().enumerate() {
        x = layer.forward(x, pos.clone(), &centres, &shapes, None);
        let key = format!("encoder.{}", i + 1);
        if refs.f32s.contains_key(&key) && i + 1 < n_enc {
            t.check(&key, x.clone(), &refs);
        }
    }
    let memory = model.encoder.forward(src, pos, &shapes, None);
    t.check(&format!("encoder.{n_enc}"), memory.clone(), &refs);

    // Every token's proposal: class logits and unactivated box (HF's two-stage head).
    let n_dec = model.decoder.layers.len();
    let (props, valid) = token_proposals(&shapes, &dev);
    let enc_out = model
        .selection
        .enc_output_norm
        .forward(model.selection.enc_output.forward(memory.clone() * valid));
    t.check(
        "enc_logits",
        model.class_heads[n_dec].forward(enc_out.clone()),
        &refs,
    );
    t.check(
        "enc_coords_unact",
        model.box_heads[n_dec].forward(enc_out) + props,
        &refs,
    );

    // Mixed query selection: the same tokens, in the same order.
    let sel = model.selection.forward(
        memory.clone(),
        &shapes,
        None,
        |x| model.class_heads[n_dec].forward(x),
        |x| model.box_heads[n_dec].forward(x),
        None,
    );
    let got: Vec<i64> = sel
        .indices
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec()
        .unwrap();
    assert_eq!(got, refs.ints["topk"].1, "{name}: top-k token indices");
    t.check("enc_sel_logits", sel.enc_logits.clone(), &refs);
    t.check("enc_boxes", sel.enc_boxes.clone(), &refs);

    // Each decoder layer on the reference's own inputs, then the query position per layer.
    let mut prev: Tensor<3> = sel.content.clone();
    for (l, layer) in model.decoder.layers.iter().enumerate() {
        let reference: Tensor<3> = to_tensor(&refs, &format!("reference.{l}"), &dev);
        let qpos = model.decoder.query_pos(reference.clone());
        t.check(&format!("decoder.query_pos.{l}"), qpos.clone(), &refs);
        let out = layer.forward(
            prev,
            qpos,
            &Reference::Boxes(reference),
            memory.clone(),
            &shapes,
            None,
            None,
        );
        t.check(&format!("decoder.raw.{l}"), out, &refs);
        prev = to_tensor(&refs, &format!("decoder.raw.{l}"), &dev);
    }

    // The whole model end to end: every layer's logits and boxes.
    let full = model.forward(images.clone()).unwrap();
    for l in 0..n_dec {
        t.check(&format!("logits.{l}"), full.logits[l].clone(), &refs);
        t.check(&format!("boxes.{l}"), full.boxes[l].clone(), &refs);
    }

    // NMS-free postprocess vs HF's image processor (+ the clamp to the image).
    let sizes: Vec<[u32; 2]> = refs.ints["orig_sizes"]
        .1
        .chunks(2)
        .map(|c| [c[0] as u32, c[1] as u32])
        .collect();
    let det = model.detect(images, &sizes).unwrap();
    t.check("post.scores", det.scores, &refs);
    let side = sizes.iter().flatten().copied().max().unwrap_or(1) as f32;
    t.check_in("post.boxes", det.boxes, &refs, side);
    let labels: Tensor<2, Int> = det.labels;
    let got: Vec<i64> = labels.into_data().convert::<i64>().try_to_vec().unwrap();
    assert_eq!(
        got, refs.ints["post.labels"].1,
        "{name}: postprocess labels"
    );
    t.finish();
}

#[test]
fn hf_deformable_detr_r50_bottleneck_4_levels() {
    parity("ddetr_r50", &Device::flex());
}

#[test]
fn hf_deformable_detr_r18_basic_5_levels_non_square() {
    parity("ddetr_r18", &Device::flex());
}

/// The same parity on the wgpu device: Burn's CubeCL kernels (WGSL, on Mesa's lavapipe in CI)
/// and the model's non-Flex paths (the CubeCL MSDA kernels instead of the host loops) against HF.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
#[test]
fn hf_deformable_detr_on_the_wgpu_device() {
    let Some(gpu) = codetr_core::device::software_gpu().unwrap() else {
        return;
    };
    parity("ddetr_r50", &gpu);
    parity("ddetr_r18", &gpu);
}

#[test]
fn fixture_weights_cover_every_parameter() {
    // The loader asserts nothing is missing or left over; also check the count matches the
    // model's own parameter count (no tensor silently skipped by a partial load).
    let dev = Device::flex();
    for name in ["ddetr_r50", "ddetr_r18"] {
        let model = load_model(name, &dev);
        let bytes = std::fs::read(common::fixture(&format!("{name}.weights.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let in_file: usize = st
            .tensors()
            .iter()
            .map(|(_, v)| v.shape().iter().product::<usize>())
            .sum();
        assert_eq!(model.num_params(), in_file, "{name}");
    }
}
