//! The official Co-DINO checkpoint's training heads in our `TrainHeads`, checked against the
//! official modules (mmdetection 3.3.0 `projects/CO-DETR`, `tests/reference/
//! make_official_fixtures.py --aux`): the fixture checkpoint's weights, the official aux
//! modules run on a fixed random encoder memory and fixed boxes, ours on the same inputs.
//! What is compared: the adapter's extra level, the ATSS and RPN outputs flattened over levels,
//! locations and anchors, their anchors and decoded boxes, the RoI head on RoIs of every
//! level (RoIAlign is torchvision's there), and both heads' positive-query contents.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use codetr_core::geometry::coder::{DeltaCoder, decode_deltas};
use codetr_core::import::{Imported, import_co_dino, pth};
use codetr_core::model::DetectorConfig;
use codetr_train::auxiliary::atss_head::pyramid_anchors;
use codetr_train::auxiliary::official::{co_config_of, load_official_heads};
use codetr_train::auxiliary::roi_head::{RoiSamples, roi_features};
use codetr_train::auxiliary::rpn_head::pyramid_rpn_anchors;
use codetr_train::train::config::CoConfig;

fn official(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/fixtures/official")
        .join(name)
}

fn import() -> Imported {
    let text = std::fs::read_to_string(official("co_dino_small.toml")).unwrap();
    let cfg = DetectorConfig::from_toml(&text).unwrap();
    import_co_dino(&official("co_dino_small.pth"), &cfg, &Device::flex()).unwrap()
}

/// The reference tensors: name → (shape, f32 values; int64 as f32).
fn reference() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(official("co_dino_small.aux.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = match t.dtype() {
                safetensors::Dtype::I64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                _ => t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            };
            (name, (t.shape().to_vec(), v))
        })
        .collect()
}

fn tensor<const D: usize>(r: &(Vec<usize>, Vec<f32>), device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(r.1.clone(), r.0.clone()), device)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

/// Max |ours − theirs| over the elements, relative to max(1, |theirs|).
fn max_diff(what: &str, ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let d = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    eprintln!("{what}: max diff {d:.2e}");
    d
}

/// Max |ours − theirs| of pixel boxes as a fraction of the 128-pixel input side (the
/// detector parity's measure): decoding multiplies a delta's rounding by up to e^4.1 (mmdet's
/// clamp) times the anchor size, so a relative bound on pixels would measure the float format.
fn max_box_diff(what: &str, ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let d = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs() / 128.0)
        .fold(0.0f32, f32::max);
    eprintln!("{what}: max diff {d:.2e} of the side");
    d
}

#[test]
fn official_training_heads_match_the_official_modules() {
    let device = Device::flex();
    let imp = import();
    let co = co_config_of(&imp.training, &CoConfig::default(), &imp.config).unwrap();
    assert_eq!(co.k, 2);
    assert!(!co.query_features, "Co-DINO: with_coord_feat = False");
    assert_eq!(
        (co.roi.fc_dim, co.roi.pool),
        (32, 7),
        "the fixture's RoI head"
    );
    let (heads, report) = load_official_heads(&imp.training, &imp.config, &co, &device).unwrap();
    // Every training tensor of the file found a home (the six scales as one vector).
    let scales = imp
        .training
        .keys()
        .filter(|k| k.starts_with("bbox_head.0.scales."))
        .count();
    assert_eq!(scales, 6);
    assert_eq!(report.tensors, imp.training.len() - scales + 1);
    let r = reference();
    let tol = 1e-4;

    // Denoising embedding: the file's tensor as it is.
    let file = pth::read_f32(&imp.training["query_head.dn_generator.label_embedding.weight"])
        .unwrap()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(host(heads.label_embed.val()), file);

    // The adapter pyramid.
    let memory: Tensor<3> = tensor(&r["memory"], &device);
    let shapes: Vec<[usize; 2]> = r["shapes"]
        .1
        .chunks_exact(2)
        .map(|c| [c[0] as usize, c[1] as usize])
        .collect();
    let maps = heads
        .adapter
        .as_ref()
        .unwrap()
        .forward(memory.clone(), &shapes);
    let extra = maps.last().unwrap().clone();
    assert!(max_diff("adapter extra level", &host(extra), &r["adapter.extra"].1) <= tol);
    let pyr_shapes: Vec<[usize; 2]> = maps
        .iter()
        .map(|m| {
            let [_, _, h, w] = m.dims();
            [h, w]
        })
        .collect();
    let enc_strides = imp.config.level_strides();
    let mut strides = enc_strides.clone();
    strides.push(enc_strides.last().unwrap() * 2);

    // ATSS: outputs, anchors, decoded boxes.
    let out = heads.atss.as_ref().unwrap().forward(&maps);
    assert!(max_diff("atss cls", &host(out.cls), &r["atss.cls"].1) <= tol);
    let reg = out.reg;
    assert!(max_diff("atss reg", &host(reg.clone()), &r["atss.reg"].1) <= tol);
    assert!(max_diff("atss centerness", &host(out.ctr), &r["atss.ctr"].1) <= tol);
    let (anchors, _) = pyramid_anchors(&pyr_shapes, &strides, &co.atss);
    let flat: Vec<f32> = anchors.iter().flatten().copied().collect();
    assert!(max_diff("atss anchors", &flat, &r["atss.anchors"].1) <= tol);
    let decode = |anchors: &[[f32; 4]], deltas: Tensor<3>, coder: &DeltaCoder| -> Vec<f32> {
        let [b, a, _] = deltas.dims();
        let anc: Vec<f32> = (0..b)
            .flat_map(|_| anchors.iter().flatten().copied())
            .collect();
        let anc = Tensor::<2>::from_data(TensorData::new(anc, [b * a, 4]), &device);
        host(decode_deltas(anc, deltas.reshape([b * a, 4]), coder))
    };
    let boxes = decode(&anchors, reg, &DeltaCoder::default());
    assert!(max_box_diff("atss boxes", &boxes, &r["atss.boxes"].1) <= tol);

    // RPN.
    let out = heads.rpn.as_ref().unwrap().forward(&maps);
    assert!(
        max_diff(
            "rpn objectness",
            &host(out.objectness),
            &r["rpn.objectness"].1
        ) <= tol
    );
    assert!(max_diff("rpn deltas", &host(out.deltas.clone()), &r["rpn.deltas"].1) <= tol);
    let (anchors, _) = pyramid_rpn_anchors(&pyr_shapes, &strides, &co.rpn);
    let flat: Vec<f32> = anchors.iter().flatten().copied().collect();
    assert!(max_diff("rpn anchors", &flat, &r["rpn.anchors"].1) <= tol);
    let boxes = decode(&anchors, out.deltas, &DeltaCoder { stds: [1.0; 4] });
    assert!(max_box_diff("rpn boxes", &boxes, &r["rpn.boxes"].1) <= tol);

    // RoI head on RoIs of every level: `[batch, x1, y1, x2, y2]` rows, image 0's first.
    let rois = &r["roi.rois"].1;
    let b = memory.dims()[0];
    let mut samples = RoiSamples {
        boxes: vec![vec![]; b],
        gt: vec![vec![]; b],
    };
    for row in rois.chunks_exact(5) {
        let i = row[0] as usize;
        samples.boxes[i].push([row[1], row[2], row[3], row[4]]);
        samples.gt[i].push(None);
    }
    let feats = roi_features(memory, &shapes, &enc_strides, &samples, &co.roi).unwrap();
    let (cls, reg) = heads.roi.as_ref().unwrap().forward(feats);
    assert!(max_diff("roi cls", &host(cls), &r["roi.cls"].1) <= tol);
    let c = imp.config.num_classes;
    let n = rois.len() / 5;
    let roi_anchors: Vec<[f32; 4]> = rois
        .chunks_exact(5)
        .flat_map(|row| std::iter::repeat_n([row[1], row[2], row[3], row[4]], c))
        .collect();
    assert!(max_diff("roi reg", &host(reg.clone()), &r["roi.reg"].1) <= tol);
    let boxes = decode(
        &roi_anchors,
        reg.reshape([1, n * c, 4]),
        &DeltaCoder::default(),
    );
    assert!(max_box_diff("roi boxes", &boxes, &r["roi.boxes"].1) <= tol);

    // Positive-query contents: head 0 is the RoI head's, head 1 the ATSS head's.
    let qb: Tensor<3> = tensor(&r["queries.boxes"], &device);
    for (name, proj) in [("rcnn", &heads.rcnn_queries), ("atss", &heads.atss_queries)] {
        let q = proj.as_ref().unwrap().forward(qb.clone(), None);
        let key = format!("queries.{name}");
        assert!(max_diff(&key, &host(q), &r[&key].1) <= tol);
    }
}

#[test]
fn a_missing_or_unknown_head_tensor_is_listed_and_nothing_is_built() {
    let device = Device::flex();
    let imp = import();
    let co = co_config_of(&imp.training, &CoConfig::default(), &imp.config).unwrap();

    let mut training = imp.training.clone();
    training.remove("rpn_head.rpn_conv.weight");
    let err = load_official_heads(&training, &imp.config, &co, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("rpn.conv.weight") && err.contains("not in the file"),
        "{err}"
    );

    let mut training = imp.training.clone();
    let t = training["rpn_head.rpn_conv.bias"].clone();
    training.insert("query_head.transformer.head_pos_embed.weight".into(), t);
    let err = load_official_heads(&training, &imp.config, &co, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("head_pos_embed") && err.contains("no home"),
        "{err}"
    );

    // Heads that do not fit the run's [co]: an RPN with another anchor count.
    let mut base = CoConfig::default();
    base.rpn.ratios = vec![1.0];
    let err = co_config_of(&imp.training, &base, &imp.config)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("9 anchors per location") && err.contains("[co.rpn]"),
        "{err}"
    );
}
