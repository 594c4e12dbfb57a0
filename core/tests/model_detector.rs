//! The detector end to end at random init: shapes, finiteness, determinism, bad input, and
//! parameter counts of the presets.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use codetr_core::model::DetectorConfig;
use codetr_core::model::detector::pixels_to_tensor;
use codetr_data::rng::Rng;

fn pixels(b: usize, s: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..b * s * s * 3).map(|_| r.below(256) as u8).collect()
}

fn all_finite<const D: usize>(t: &Tensor<D>) -> bool {
    let v: Vec<f32> = t.clone().into_data().convert::<f32>().try_to_vec().unwrap();
    v.iter().all(|x| x.is_finite())
}

#[test]
fn tiny_forward_shapes_and_detections() {
    let dev = Device::flex();
    dev.seed(0);
    let cfg = DetectorConfig::tiny();
    let model = cfg.init(&dev).unwrap();
    let s = cfg.input_size as usize;
    let x = pixels_to_tensor(&pixels(2, s, 1), 2, s, s, &dev).unwrap();
    let out = model.forward(x.clone()).unwrap();
    let (q, c) = (cfg.transformer.num_queries, cfg.num_classes);
    assert_eq!(out.logits.len(), cfg.transformer.decoder_layers);
    assert_eq!(out.shapes, cfg.level_shapes());
    for (l, b) in out.logits.iter().zip(&out.boxes) {
        assert_eq!(l.dims(), [2, q, c]);
        assert_eq!(b.dims(), [2, q, 4]);
        assert!(all_finite(l) && all_finite(b));
    }
    assert_eq!(out.enc_logits.dims(), [2, q, c]);
    let det = model.detect(x, &[[480, 640], [100, 50]]).unwrap();
    assert_eq!(det.scores.dims(), [2, cfg.max_detections]);
    let sc: Vec<f32> = det.scores.into_data().try_to_vec().unwrap();
    assert!(
        sc[..cfg.max_detections].windows(2).all(|w| w[0] >= w[1]),
        "scores sorted"
    );
    let bx: Vec<f32> = det.boxes.into_data().try_to_vec().unwrap();
    let per = cfg.max_detections * 4;
    for (i, &(w, h)) in [(640.0f32, 480.0f32), (50.0, 100.0)].iter().enumerate() {
        for b in bx[i * per..(i + 1) * per].chunks(4) {
            assert!(
                b[0] >= 0.0
                    && b[1] >= 0.0
                    && b[2] <= w
                    && b[3] <= h
                    && b[0] <= b[2]
                    && b[1] <= b[3],
                "{b:?}"
            );
        }
    }
}

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().try_to_vec().unwrap()
}

/// `forward_given_selection` (what `codetr-export --check` runs on the graph's selection):
/// Burn's own selection given back reproduces its forward exactly, padded or not; the same
/// proposals in other query slots change the detections (each slot has its own content
/// query); indices that cannot be a selection are an error.
#[test]
fn a_given_query_selection_replaces_the_top_k() {
    let dev = Device::flex();
    dev.seed(4);
    let cfg = DetectorConfig::tiny();
    let model = cfg.init(&dev).unwrap();
    let s = cfg.input_size as usize;
    let q = cfg.transformer.num_queries;
    let x = pixels_to_tensor(&pixels(2, s, 9), 2, s, s, &dev).unwrap();
    let valid = [[s, s], [s * 3 / 4, s / 2]];
    for v in [None, Some(&valid[..])] {
        let own = match v {
            Some(v) => model.forward_padded(x.clone(), v).unwrap(),
            None => model.forward(x.clone()).unwrap(),
        };
        let idx: Vec<i64> = own
            .enc_indices
            .clone()
            .into_data()
            .convert::<i64>()
            .try_to_vec()
            .unwrap();
        assert_eq!(idx.len(), 2 * q);
        let again = model.forward_given_selection(x.clone(), v, &idx).unwrap();
        for (a, b) in own.logits.iter().zip(&again.logits) {
            assert_eq!(host(a), host(b));
        }
        assert_eq!(host(&own.enc_logits), host(&again.enc_logits));
        // image 0's first two slots swapped: same proposals, other content queries
        let mut swapped = idx.clone();
        swapped.swap(0, 1);
        let moved = model
            .forward_given_selection(x.clone(), v, &swapped)
            .unwrap();
        let (a, b) = (
            host(own.logits.last().unwrap()),
            host(moved.logits.last().unwrap()),
        );
        let diff = a
            .iter()
            .zip(&b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff > 1e-3, "swapped slots changed nothing ({diff})");
    }
    let tokens = cfg.tokens_at(s, s) as i64;
    let mut bad = vec![0i64; 2 * q];
    bad[5] = tokens;
    let e = model
        .forward_given_selection(x.clone(), None, &bad)
        .err()
        .unwrap();
    assert!(e.to_string().contains("outside"), "{e}");
    let e = model
        .forward_given_selection(x, None, &bad[1..])
        .err()
        .unwrap();
    assert!(e.to_string().contains("indices for 2 images"), "{e}");
}

#[test]
fn same_seed_same_weights_and_outputs() {
    let cfg = DetectorConfig::tiny();
    let run = || {
        let dev = Device::flex();
        dev.seed(42);
        let m = cfg.init(&dev).unwrap();
        let x = pixels_to_tensor(&pixels(1, 256, 3), 1, 256, 256, &dev).unwrap();
        let o = m.forward(x).unwrap();
        o.logits
            .last()
            .unwrap()
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(run(), run());
}

#[test]
fn bad_input_is_a_clear_error() {
    let dev = Device::flex();
    let cfg = DetectorConfig::tiny();
    let model = cfg.init(&dev).unwrap();
    let e = model
        .forward(Tensor::zeros([1, 256, 256, 4], &dev))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("3 RGB channels"), "{e}");
    let e = model
        .forward(Tensor::zeros([0, 256, 256, 3], &dev))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("empty batch"), "{e}");
    let e = model
        .forward(Tensor::zeros([1, 32, 32, 3], &dev))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("smaller than the coarsest stride"), "{e}");
    assert!(pixels_to_tensor(&[0u8; 10], 1, 2, 2, &dev).is_err());
    let e = model
        .detect(Tensor::zeros([1, 256, 256, 3], &dev), &[])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("orig_sizes"), "{e}");
}

#[test]
fn parameter_counts() {
    let dev = Device::flex();
    let tiny = DetectorConfig::tiny().init(&dev).unwrap();
    let mut paper_cfg = DetectorConfig::paper_r50();
    paper_cfg.input_size = 128; // the count does not depend on it; keeps the test light
    let paper = paper_cfg.init(&dev).unwrap();
    // Our FrozenBatchNorm stores running mean/var as (frozen) params: R50 has 26,560 BN
    // channels → 53,120 extra values vs the official count of 48,044,300 (trainable +
    // frozen weights, buffers excluded), computed from the Sense-X/Co-DETR module definitions.
    let bn_buffers = 53_120;
    println!(
        "tiny: {} params; paper-r50: {} (official inference 48,044,300 + {bn_buffers} BN buffers)",
        tiny.num_params(),
        paper.num_params()
    );
    assert_eq!(paper.num_params(), 48_044_300 + bn_buffers);
}

/// Every op of the model has a backward on the Flex autodiff device: gradients reach the
/// first trainable layer and are finite; frozen stages get none.
#[test]
fn backward_reaches_every_trainable_module_and_skips_frozen_ones() {
    let dev = Device::flex().autodiff();
    dev.seed(1);
    let mut cfg = DetectorConfig::tiny();
    cfg.backbone.resnet_mut().unwrap().frozen_stages = 1;
    cfg.input_size = 128;
    cfg.transformer.num_queries = 30;
    cfg.max_detections = 30;
    let model = cfg.init(&dev).unwrap();
    let x = pixels_to_tensor(&pixels(2, 128, 4), 2, 128, 128, &dev).unwrap();
    let out = model.forward(x).unwrap();
    let mut loss = burn::tensor::activation::sigmoid(out.enc_logits.clone()).mean()
        + out.enc_boxes.clone().mean();
    for (l, b) in out.logits.iter().zip(&out.boxes) {
        loss = loss + burn::tensor::activation::sigmoid(l.clone()).mean() + b.clone().mean();
    }
    let grads = loss.backward();
    let finite_nonzero = |g: Tensor<4>| {
        let v: Vec<f32> = g.into_data().convert::<f32>().try_to_vec().unwrap();
        v.iter().all(|x| x.is_finite()) && v.iter().any(|x| *x != 0.0)
    };
    // layer2 is the first trainable stage; the stem and layer1 are frozen.
    let w = model.backbone.as_resnet().unwrap().layer2[0]
        .conv1
        .weight
        .val();
    assert!(finite_nonzero(
        w.grad(&grads).expect("layer2 has a gradient")
    ));
    assert!(
        model
            .backbone
            .as_resnet()
            .unwrap()
            .conv1
            .weight
            .val()
            .grad(&grads)
            .is_none(),
        "stem is frozen"
    );
    assert!(
        model.backbone.as_resnet().unwrap().layer1[0]
            .conv1
            .weight
            .val()
            .grad(&grads)
            .is_none(),
        "layer1 is frozen"
    );
    let neck = model.neck.convs[0].conv.weight.val();
    assert!(finite_nonzero(
        neck.grad(&grads).expect("neck has a gradient")
    ));
    let off = model.encoder.layers[0]
        .self_attn
        .sampling_offsets
        .weight
        .val();
    let g: Vec<f32> = off
        .grad(&grads)
        .expect("MSDA offsets get gradients")
        .into_data()
        .try_to_vec()
        .unwrap();
    assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|x| *x != 0.0));
    let q = model.selection.query_embed.val();
    assert!(q.grad(&grads).is_some(), "content queries get gradients");
}
