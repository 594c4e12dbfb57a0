//! Where Co-DETR's one-to-many supervision sends gradient: the aux losses alone must reach the
//! encoder and backbone (that is the paper's point: better encoder features) and must NOT
//! touch parameters only the one-to-one branch uses.

use burn::tensor::Device;
use codetr_data::loader::{Batch, Target};
use codetr_data::rng::Rng;
use codetr_train::train::codetr::CoDetr;
use codetr_train::train::config::FitConfig;

fn batch(size: u32) -> Batch {
    let mut r = Rng::new(4);
    let n = 2;
    let pixels = (0..n * (size * size * 3) as usize)
        .map(|_| r.below(256) as u8)
        .collect();
    let t = |boxes: Vec<[f32; 4]>, labels: Vec<usize>| Target {
        image_id: 0,
        orig_size: [size, size],
        labels,
        boxes,
    };
    Batch {
        epoch: 0,
        index: 0,
        size,
        pixels,
        targets: vec![
            t(vec![[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.4, 0.3]], vec![1, 2]),
            t(vec![[0.5, 0.5, 0.5, 0.5]], vec![0]),
        ],
        valid: vec![[size, size]; n],
    }
}

/// A small K = 2 run config; `co_extra` adds keys to its `[co]` table.
fn small_k2_config(co_extra: &str) -> FitConfig {
    FitConfig::from_toml(&format!(
        r#"
[model]
preset = "tiny"
input_size = 128
num_classes = 3
max_detections = 20
[model.transformer]
d_model = 64
ffn_dim = 128
encoder_layers = 1
decoder_layers = 2
num_queries = 20
[co]
k = 2
{co_extra}
max_positive_queries = 30
[co.rpn]
pre_nms = 200
post_nms = 100
[co.roi]
samples = 64
fc_dim = 64
"#
    ))
    .unwrap()
}

/// That config's model on an autodiff Flex device (seed 1), and the loss's rng.
fn small_k2_model(co_extra: &str) -> (FitConfig, CoDetr, Rng) {
    let dev = Device::flex().autodiff();
    dev.seed(1);
    let cfg = small_k2_config(co_extra);
    let det = cfg.detector().unwrap();
    let model = CoDetr::new(&det, cfg.co.k, &cfg.co, &dev).unwrap();
    (cfg, model, Rng::new(0))
}

#[test]
fn aux_loss_reaches_encoder_and_backbone_only_through_shared_parts() {
    let (cfg, model, mut rng) = small_k2_model("");
    let loss = model.loss(&batch(128), &cfg, &mut rng).unwrap();
    let grads = loss.aux.expect("k = 1 has an aux loss").backward();
    let d = &model.detector;
    let nonzero = |g: Option<burn::tensor::Tensor<2>>| {
        g.map(|t| t.abs().sum().into_scalar::<f32>() > 0.0)
            .unwrap_or(false)
    };
    let nonzero4 = |g: Option<burn::tensor::Tensor<4>>| {
        g.map(|t| t.abs().sum().into_scalar::<f32>() > 0.0)
            .unwrap_or(false)
    };
    // shared: encoder, backbone (layer2+, trainable in tiny), neck, decoder, heads
    assert!(nonzero(
        d.encoder.layers[0]
            .self_attn
            .value_proj
            .weight
            .val()
            .grad(&grads)
    ));
    assert!(nonzero4(
        d.backbone.as_resnet().unwrap().layer2[0]
            .conv1
            .weight
            .val()
            .grad(&grads)
    ));
    assert!(nonzero(
        d.decoder.layers[0].ffn.linear1.weight.val().grad(&grads)
    ));
    assert!(nonzero(d.class_heads[0].weight.val().grad(&grads)));
    let heads = &model.heads;
    assert!(nonzero4(
        heads
            .atss
            .as_ref()
            .unwrap()
            .cls_out
            .weight
            .val()
            .grad(&grads)
    ));
    let q = heads.atss_queries.as_ref().unwrap();
    assert!(nonzero(q.pos_trans.weight.val().grad(&grads)));
    // paper eq. 4: the pyramid feature at the anchor is part of the content
    assert!(nonzero(q.feat_trans.weight.val().grad(&grads)));
    // one-to-one only: learned content queries, proposal scoring, encoder head, dn labels
    let none2 = |g: Option<burn::tensor::Tensor<2>>| !nonzero(g);
    assert!(none2(d.selection.query_embed.val().grad(&grads)));
    assert!(none2(d.selection.enc_output.weight.val().grad(&grads)));
    assert!(none2(d.class_heads[2].weight.val().grad(&grads)));
    assert!(none2(heads.label_embed.val().grad(&grads)));
    // and the full loss (same batch, same noise; Burn has no retain_graph) does reach them
    let mut rng = Rng::new(0);
    let grads = model
        .loss(&batch(128), &cfg, &mut rng)
        .unwrap()
        .total
        .backward();
    assert!(nonzero(d.selection.query_embed.val().grad(&grads)));
    assert!(nonzero(heads.label_embed.val().grad(&grads)));
}

/// The decoder self-attention mask isolates the query groups: perturbing dn group 1 changes
/// neither dn group 0 nor the matching queries; perturbing the matching queries' content
/// does change the dn groups (DINO lets dn queries see the matching ones, not the reverse).
#[test]
fn attention_mask_isolates_query_groups() {
    use burn::tensor::{Bool, Tensor, TensorData};
    use codetr_core::model::detector::pixels_to_tensor;
    use codetr_train::train::denoising::attention_mask;

    let dev = Device::flex();
    dev.seed(2);
    let cfg = FitConfig::from_toml(
        "[model]\npreset = \"tiny\"\ninput_size = 128\nnum_classes = 3\nmax_detections = 20\n[model.transformer]\nd_model = 64\nffn_dim = 128\nencoder_layers = 1\ndecoder_layers = 2\nnum_queries = 10\n",
    )
    .unwrap();
    let det = cfg.detector().unwrap().init(&dev).unwrap();
    let b = batch(128);
    let x = pixels_to_tensor(&b.pixels, 2, 128, 128, &dev).unwrap();
    let (groups, size, q) = (2usize, 4usize, 10usize);
    let pad = groups * size;
    let run = |dn_shift: f32, group: usize, match_shift: f32| {
        let out = det
            .forward_with(x.clone(), |memory, shapes, sel| {
                let d = sel.content.dims()[2];
                let mut shift = vec![0f32; 2 * pad * d];
                for i in 0..2 {
                    for s in group * size..(group + 1) * size {
                        for c in 0..d {
                            shift[(i * pad + s) * d + c] = dn_shift;
                        }
                    }
                }
                let dn = Tensor::<3>::from_data(TensorData::new(shift, [2, pad, d]), &dev);
                let refs = Tensor::<3>::full([2, pad, 4], 0.3, &dev);
                let (n, m) = attention_mask(Some((groups, size)), q, &[]);
                let mask = Tensor::<2, Bool>::from_data(TensorData::new(m, [n, n]), &dev);
                (
                    Tensor::cat(vec![dn, sel.content.clone() + match_shift], 1),
                    Tensor::cat(vec![refs, sel.reference.clone()], 1),
                    Some(mask),
                    memory,
                    shapes,
                )
            })
            .unwrap();
        let v: Vec<f32> = out
            .logits
            .last()
            .unwrap()
            .clone()
            .into_data()
            .try_to_vec()
            .unwrap();
        v
    };
    let c = 3;
    let part = |v: &[f32], from: usize, to: usize| -> Vec<f32> {
        (0..2)
            .flat_map(|i| v[(i * (pad + q) + from) * c..(i * (pad + q) + to) * c].to_vec())
            .collect()
    };
    let base = run(0.0, 1, 0.0);
    let moved = run(0.5, 1, 0.0);
    assert_eq!(
        part(&base, 0, size),
        part(&moved, 0, size),
        "dn group 0 saw group 1"
    );
    assert_eq!(
        part(&base, pad, pad + q),
        part(&moved, pad, pad + q),
        "matching saw dn"
    );
    assert_ne!(
        part(&base, size, pad),
        part(&moved, size, pad),
        "group 1 itself must change"
    );
    let m = run(0.0, 1, 0.5);
    assert_ne!(
        part(&base, 0, size),
        part(&m, 0, size),
        "dn queries see the matching ones"
    );
}

/// `co.query_features = false` (official Co-DINO's `with_coord_feat=False`): the positive
/// queries' content is the box embedding alone, so the feature projections get no gradient
/// while the box projections still do.
#[test]
fn positive_queries_without_features_use_the_box_embedding_only() {
    let (cfg, model, mut rng) = small_k2_model("query_features = false");
    let grads = model
        .loss(&batch(128), &cfg, &mut rng)
        .unwrap()
        .total
        .backward();
    let nonzero = |g: Option<burn::tensor::Tensor<2>>| {
        g.map(|t| t.abs().sum().into_scalar::<f32>() > 0.0)
            .unwrap_or(false)
    };
    for (name, q) in [
        ("atss", model.heads.atss_queries.as_ref().unwrap()),
        ("rcnn", model.heads.rcnn_queries.as_ref().unwrap()),
    ] {
        assert!(nonzero(q.pos_trans.weight.val().grad(&grads)), "{name}");
        assert!(!nonzero(q.feat_trans.weight.val().grad(&grads)), "{name}");
    }
}

/// What one K = 2 loss reads back to the host (on a GPU each read is a sync): one read per
/// Hungarian-matched output (2 decoder layers + the encoder proposals, `[B, Q, G_max + 4]`
/// each), one for the RPN's top-k, one for every loss term with the total. Nothing of the
/// size of a dense head output: the largest read is the RPN top-k, far below the RPN's
/// `[B, N]` objectness + `[B, N, 4]` deltas that used to be read whole.
#[test]
fn a_k2_loss_reads_back_few_small_tensors() {
    let (cfg, model, mut rng) = small_k2_model("");
    codetr_train::host::reset();
    let loss = model.loss(&batch(128), &cfg, &mut rng).unwrap();
    let got = codetr_train::host::snapshot();
    let layers = 2;
    assert_eq!(got.reads, layers + 1 + 1 + 1, "{got:?}");
    // RPN on the 128² adapter pyramid (strides 8…128: 16², 8², 4², 2², 1²) × 9 anchors.
    let anchors: usize = [256, 64, 16, 4, 1].iter().map(|c| c * 9).sum();
    let dense = 2 * anchors * 5 * 4;
    let top_k: usize = [256usize, 64, 16, 4, 1]
        .iter()
        .map(|c| 6 * (c * 9).min(200) + 2)
        .sum::<usize>()
        * 2
        * 4;
    assert_eq!(got.largest as usize, top_k, "{got:?}");
    assert!(got.largest as usize * 2 < dense, "{got:?} vs {dense}");
    let terms = loss
        .terms
        .iter()
        .filter(|(n, _)| n.contains("loss_"))
        .count();
    assert!(terms > 20, "{terms} terms");
    assert!(loss.value.is_finite());
}

/// Training heads saved before the adapter's conv had a bias (the official one has) resume
/// with a zero bias; a record missing anything else is still an error.
#[test]
fn heads_saved_without_the_adapter_bias_load_with_a_zero_bias() {
    use burn::module::Module;
    use codetr_train::train::codetr::TrainHeads;
    let dev = Device::flex();
    dev.seed(3);
    let cfg = small_k2_config("");
    let det = cfg.detector().unwrap();
    let fresh = || TrainHeads::new(&det, cfg.co.k, &cfg.co, &dev).unwrap();
    let mut old = fresh();
    old.adapter.as_mut().unwrap().downsample.conv.bias = None;
    let gn_before = old.adapter.as_ref().unwrap().downsample.gn.gamma.clone();
    let loaded = fresh().load_saved(old.clone().into_record()).unwrap();
    let a = loaded.adapter.as_ref().unwrap();
    let bias = a.downsample.conv.bias.as_ref().unwrap().val();
    assert_eq!(bias.abs().max().into_scalar::<f32>(), 0.0);
    let same = a
        .downsample
        .gn
        .gamma
        .as_ref()
        .unwrap()
        .val()
        .equal(gn_before.as_ref().unwrap().val());
    assert!(
        same.all().into_scalar::<bool>(),
        "the record's weights are loaded"
    );
    // A current record loads as it is.
    let now = fresh();
    let again = fresh().load_saved(now.clone().into_record()).unwrap();
    assert!(
        again
            .label_embed
            .val()
            .equal(now.label_embed.val())
            .all()
            .into_scalar::<bool>()
    );
    // One more tensor missing: not the old layout, an error.
    let mut older = old;
    older.atss.as_mut().unwrap().cls_out.bias = None;
    assert!(fresh().load_saved(older.into_record()).is_err());
}

/// A letterboxed batch: what the padding holds does not change the K = 2 loss (the model masks
/// the normalised input, every attention and every anchor over it), its valid region does,
/// and the padded forward is really taken (a batch whose images fill the canvas gives another
/// loss than the same pixels declared padded).
#[test]
fn letterboxed_loss_ignores_what_the_padding_holds() {
    let (cfg, model, _) = small_k2_model("");
    let mut b = batch(128);
    // image 0: 128 × 96 (h × w), image 1: 80 × 128; boxes normalised by those regions
    b.valid = vec![[128, 96], [80, 128]];
    let zero_padding = |b: &mut Batch, fill: &dyn Fn(usize) -> u8| {
        for (i, &[vh, vw]) in b.valid.clone().iter().enumerate() {
            for y in 0..128usize {
                for x in 0..128usize {
                    if y >= vh as usize || x >= vw as usize {
                        for c in 0..3 {
                            let k = ((i * 128 + y) * 128 + x) * 3 + c;
                            b.pixels[k] = fill(k);
                        }
                    }
                }
            }
        }
    };
    let loss = |b: &Batch| {
        let mut rng = Rng::new(0);
        let l = model.loss(b, &cfg, &mut rng).unwrap();
        (l.value, l.terms)
    };
    zero_padding(&mut b, &|_| 0);
    let (zeros, terms) = loss(&b);
    for k in [
        "atss.loss_cls",
        "rpn.loss_cls",
        "roi.loss_cls",
        "pos0.loss_cls",
        "pos1.loss_cls",
    ] {
        assert!(
            terms.iter().any(|(n, v)| n == k && v.is_finite()),
            "{k} missing: {terms:?}"
        );
    }
    zero_padding(&mut b, &|k| (k * 37 % 251) as u8);
    let (noise, _) = loss(&b);
    assert_eq!(zeros, noise, "the padding's pixels reached the loss");
    let mut full = b.clone();
    full.valid = vec![[128, 128]; 2];
    let (unpadded, _) = loss(&full);
    assert_ne!(zeros, unpadded, "the valid sizes were not used");
}

/// A K = 2 step on the wgpu device (CubeCL's kernels, WGSL on Mesa's lavapipe in CI) equals
/// the same step on Flex from the same weights and noise: every loss term (the matcher, ATSS
/// assignment, RPN proposals + NMS, RoIAlign, denoising and positive queries all run on the
/// device), and the gradients of parameters each branch reaches.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
#[test]
fn a_k2_step_on_the_wgpu_device_equals_the_flex_step() {
    use burn::module::Module;
    let Some(gpu) = codetr_core::device::software_gpu().unwrap() else {
        return;
    };
    let (cfg, model, _) = small_k2_model("");
    let on_gpu = model.clone().fork(&gpu.autodiff());
    let flex = model.loss(&batch(128), &cfg, &mut Rng::new(0)).unwrap();
    let wgpu = on_gpu.loss(&batch(128), &cfg, &mut Rng::new(0)).unwrap();
    assert_eq!(
        flex.terms.iter().map(|t| &t.0).collect::<Vec<_>>(),
        wgpu.terms.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    let mut worst = (String::new(), 0f32);
    // `t_*` terms are wall times, not losses.
    let losses = flex.terms.iter().zip(&wgpu.terms);
    for ((name, a), (_, b)) in losses.filter(|((n, _), _)| !n.starts_with("t_")) {
        let rel = (a - b).abs() / a.abs().max(1.0);
        if rel > worst.1 {
            worst = (name.clone(), rel);
        }
    }
    eprintln!(
        "{} terms, total {} (Flex) vs {} (wgpu); worst relative loss difference {:.2e} ({})",
        flex.terms.len(),
        flex.value,
        wgpu.value,
        worst.1,
        worst.0
    );
    assert!(worst.1 <= 1e-3, "{worst:?}");

    let (gf, gw) = (flex.total.backward(), wgpu.total.backward());
    let rel = |a: Option<burn::tensor::Tensor<2>>, b: Option<burn::tensor::Tensor<2>>| {
        let (a, b) = (a.expect("a Flex gradient"), b.expect("a wgpu gradient"));
        let scale = a.clone().abs().max().into_scalar::<f32>().max(1e-12);
        (a - b.to_device(&Device::flex()))
            .abs()
            .max()
            .into_scalar::<f32>()
            / scale
    };
    type Pick = fn(&CoDetr) -> burn::tensor::Tensor<2>;
    let picks: [(&str, Pick); 6] = [
        ("encoder value_proj", |m| {
            m.detector.encoder.layers[0]
                .self_attn
                .value_proj
                .weight
                .val()
        }),
        ("decoder ffn", |m| {
            m.detector.decoder.layers[0].ffn.linear1.weight.val()
        }),
        ("query embed", |m| m.detector.selection.query_embed.val()),
        ("dn label embed", |m| m.heads.label_embed.val()),
        ("ATSS positive queries", |m| {
            let q = m.heads.atss_queries.as_ref().expect("K = 2 has them");
            q.pos_trans.weight.val()
        }),
        ("RCNN positive queries", |m| {
            let q = m.heads.rcnn_queries.as_ref().expect("K = 2 has them");
            q.pos_trans.weight.val()
        }),
    ];
    let checks: Vec<(&str, f32)> = picks
        .iter()
        .map(|(what, pick)| (*what, rel(pick(&model).grad(&gf), pick(&on_gpu).grad(&gw))))
        .collect();
    eprintln!("gradients, max |Flex − wgpu| / max |Flex|: {checks:?}");
    for (what, r) in checks {
        assert!(r <= 1e-3, "{what}: {r}");
    }
}

/// Every float parameter's values, in module order.
fn all_weights<M: burn::module::Module>(m: &M) -> Vec<Vec<f32>> {
    struct V(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for V {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            let t = param.val().to_device(&Device::flex());
            self.0
                .push(t.into_data().try_to_vec::<f32>().expect("f32 weights"));
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}

/// A run's starting weights follow its seed alone: whatever drew from the generator before,
/// and the detector's part is what `codetr-train init` writes for that seed.
#[test]
fn a_runs_initial_weights_follow_its_seed_and_match_codetr_train_init() {
    use codetr_core::model::init::seeded_on_host;
    let cfg = small_k2_config("");
    let det = cfg.detector().unwrap();
    let dev = Device::flex().autodiff();
    let a = CoDetr::seeded(&det, cfg.co.k, &cfg.co, 5, &dev).unwrap();
    dev.seed(99);
    let _ = burn::tensor::Tensor::<1>::random([1000], burn::tensor::Distribution::Default, &dev);
    let b = CoDetr::seeded(&det, cfg.co.k, &cfg.co, 5, &dev).unwrap();
    let c = CoDetr::seeded(&det, cfg.co.k, &cfg.co, 6, &dev).unwrap();
    let (wa, wb, wc) = (all_weights(&a), all_weights(&b), all_weights(&c));
    assert!(wa.len() > 100, "{} parameters", wa.len());
    assert_eq!(wa, wb);
    // another seed: every randomly drawn tensor differs (constants such as zero biases or
    // unit norm scales do not)
    let drawn: Vec<_> = wa
        .iter()
        .zip(&wc)
        .filter(|(x, _)| x.iter().any(|v| *v != x[0]))
        .collect();
    assert!(drawn.len() > 50, "{} drawn tensors", drawn.len());
    // Only the MSDA sampling-offset biases, a fixed grid (one per attention layer), stay.
    let same = drawn.iter().filter(|(x, y)| x == y).count();
    let grids = det.transformer.encoder_layers + det.transformer.decoder_layers;
    assert_eq!(same, grids, "of {} non-constant tensors", drawn.len());
    let init = seeded_on_host(5, &Device::flex(), |d| det.init(d)).unwrap();
    assert_eq!(all_weights(&a.detector), all_weights(&init));
}

/// The same seed gives bit-identical starting weights on the wgpu device and on Flex (before,
/// each device drew from its own generator).
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
#[test]
fn a_seed_gives_the_same_initial_weights_on_the_wgpu_device_as_on_flex() {
    let Some(gpu) = codetr_core::device::software_gpu().unwrap() else {
        return;
    };
    let cfg = small_k2_config("");
    let det = cfg.detector().unwrap();
    let gpu = gpu.autodiff();
    let flex = CoDetr::seeded(&det, cfg.co.k, &cfg.co, 3, &Device::flex().autodiff()).unwrap();
    let on_gpu = CoDetr::seeded(&det, cfg.co.k, &cfg.co, 3, &gpu).unwrap();
    assert_eq!(
        on_gpu.detector.level_embed.val().device(),
        gpu,
        "the model lives on the GPU"
    );
    assert!(on_gpu.detector.level_embed.val().is_require_grad());
    assert_eq!(all_weights(&flex), all_weights(&on_gpu));
}
