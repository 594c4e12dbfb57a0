//! Model benchmarks on the CPU (Flex) device, printed as one JSON object per line:
//! - MSDA: host, gather, chunked (ours) vs grid_sample vs the naive loop, forward and forward+backward, at
//!   tiny and paper-r50 dimensions;
//! - detector forward time per image: tiny at 256², paper-r50 at 800².
//!
//! Run: `cargo bench -p codetr-core --bench model` (or bench/model.sh). Filter with an
//! argument: `msda` or `forward`.

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use codetr_core::model::DetectorConfig;
use codetr_core::model::detector::pixels_to_tensor;
use codetr_core::model::msda::{MsdaImpl, msda_core, msda_naive};
use codetr_data::rng::Rng;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `reps` runs after one warm-up.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

struct Dims {
    name: &'static str,
    b: usize,
    q: usize,
    h: usize,
    ch: usize,
    p: usize,
    shapes: Vec<[usize; 2]>,
    naive: bool,
}

fn msda_inputs(d: &Dims, dev: &Device) -> (Tensor<4>, Tensor<6>, Tensor<5>) {
    let mut r = Rng::new(1);
    let s: usize = d.shapes.iter().map(|[h, w]| h * w).sum();
    let l = d.shapes.len();
    let mut v =
        |n: usize, lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| r.uniform(lo, hi)).collect() };
    (
        Tensor::from_data(
            TensorData::new(v(d.b * s * d.h * d.ch, -1.0, 1.0), [d.b, s, d.h, d.ch]),
            dev,
        ),
        Tensor::from_data(
            TensorData::new(
                v(d.b * d.q * d.h * l * d.p * 2, 0.0, 1.0),
                [d.b, d.q, d.h, l, d.p, 2],
            ),
            dev,
        ),
        Tensor::from_data(
            TensorData::new(
                v(d.b * d.q * d.h * l * d.p, 0.0, 0.1),
                [d.b, d.q, d.h, l, d.p],
            ),
            dev,
        ),
    )
}

fn sync<const D: usize>(t: Tensor<D>) {
    let _ = t.into_data();
}

/// Runs `f` inside `pool` when given, else on the caller's (global) pool.
fn in_pool(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() + Send) {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

fn bench_msda() {
    let tiny_shapes = DetectorConfig::tiny().level_shapes();
    let paper_shapes = DetectorConfig::paper_r50().level_shapes();
    let tiny_s: usize = tiny_shapes.iter().map(|[h, w]| h * w).sum();
    let all = [
        Dims {
            name: "tiny encoder (B=8, Q=S)",
            b: 8,
            q: tiny_s,
            h: 4,
            ch: 32,
            p: 4,
            shapes: tiny_shapes.clone(),
            naive: true,
        },
        Dims {
            name: "tiny decoder (B=8, Q=100)",
            b: 8,
            q: 100,
            h: 4,
            ch: 32,
            p: 4,
            shapes: tiny_shapes,
            naive: true,
        },
        Dims {
            name: "paper decoder (B=1, Q=900, 800²)",
            b: 1,
            q: 900,
            h: 8,
            ch: 32,
            p: 4,
            shapes: paper_shapes.clone(),
            naive: true,
        },
        Dims {
            name: "paper encoder (B=1, Q=5000 of S, 800²)",
            b: 1,
            q: 5000,
            h: 8,
            ch: 32,
            p: 4,
            shapes: paper_shapes,
            naive: false,
        },
    ];
    let host = Device::flex();
    let ad = Device::flex().autodiff();
    for d in &all {
        let mut row = serde_json::json!({"bench": "msda", "case": d.name});
        let reps = 3;
        // `host_1thread`: the host kernel confined to a one-thread rayon pool, the peer of its
        // multi-threaded run in the same process.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a one-thread pool");
        for (name, imp, single) in [
            ("host", MsdaImpl::Host, false),
            ("host_1thread", MsdaImpl::Host, true),
            ("gather", MsdaImpl::Gather, false),
            ("grid_sample", MsdaImpl::GridSample, false),
            ("chunked", MsdaImpl::Chunked, false),
        ] {
            let pool = single.then_some(&one);
            let (v, l, w) = msda_inputs(d, &host);
            let fwd = time(reps, || {
                in_pool(pool, || {
                    sync(msda_core(v.clone(), &d.shapes, l.clone(), w.clone(), imp))
                })
            });
            let (v, l, w) = msda_inputs(d, &ad);
            let fb = time(reps, || {
                in_pool(pool, || {
                    let (v, l, w) = (
                        v.clone().require_grad(),
                        l.clone().require_grad(),
                        w.clone().require_grad(),
                    );
                    let g = msda_core(v.clone(), &d.shapes, l.clone(), w.clone(), imp)
                        .sum()
                        .backward();
                    sync(v.grad(&g).unwrap());
                    sync(l.grad(&g).unwrap());
                })
            });
            row[format!("{name}_fwd_s")] = fwd.into();
            row[format!("{name}_fwd_bwd_s")] = fb.into();
        }
        if d.naive {
            let (v, l, w) = msda_inputs(d, &host);
            row["naive_fwd_s"] = time(1, || {
                sync(msda_naive(v.clone(), &d.shapes, l.clone(), w.clone()))
            })
            .into();
        }
        let r = |a: &str, b: &str| {
            row[a].as_f64().unwrap_or(f64::NAN) / row[b].as_f64().unwrap_or(f64::NAN)
        };
        let ratios = [
            (
                "grid_sample_over_gather_fwd",
                r("grid_sample_fwd_s", "gather_fwd_s"),
            ),
            (
                "grid_sample_over_gather_fwd_bwd",
                r("grid_sample_fwd_bwd_s", "gather_fwd_bwd_s"),
            ),
            (
                "host_1thread_over_host_fwd",
                r("host_1thread_fwd_s", "host_fwd_s"),
            ),
            (
                "host_1thread_over_host_fwd_bwd",
                r("host_1thread_fwd_bwd_s", "host_fwd_bwd_s"),
            ),
            ("gather_over_host_fwd", r("gather_fwd_s", "host_fwd_s")),
            (
                "chunked_over_gather_fwd",
                r("chunked_fwd_s", "gather_fwd_s"),
            ),
            (
                "chunked_over_gather_fwd_bwd",
                r("chunked_fwd_bwd_s", "gather_fwd_bwd_s"),
            ),
            (
                "gather_over_host_fwd_bwd",
                r("gather_fwd_bwd_s", "host_fwd_bwd_s"),
            ),
        ];
        for (k, v) in ratios {
            row[k] = v.into();
        }
        println!("{row}");
    }
}

fn bench_forward() {
    for (cfg, batch, reps) in [
        (DetectorConfig::tiny(), 1, 5),
        (DetectorConfig::tiny(), 8, 3),
        (DetectorConfig::paper_r50(), 1, 2),
    ] {
        let dev = Device::flex();
        dev.seed(0);
        let model = cfg.init(&dev).expect("preset builds");
        let s = cfg.input_size as usize;
        let px: Vec<u8> = (0..batch * s * s * 3).map(|i| (i % 251) as u8).collect();
        let x = pixels_to_tensor(&px, batch, s, s, &dev).expect("pixels");
        let t = time(reps, || {
            let out = model.forward(x.clone()).expect("forward");
            sync(out.logits.last().expect("layers").clone());
        });
        println!(
            "{}",
            serde_json::json!({"bench": "forward", "preset": cfg.preset, "input": s, "batch": batch,
                               "seconds_per_batch": t, "seconds_per_image": t / batch as f64})
        );
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |n: &str| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()));
    if want("msda") {
        bench_msda();
    }
    if want("forward") {
        bench_forward();
    }
}
