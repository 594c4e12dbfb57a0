//! Training ops at detector sizes on any Burn device, forward + backward, one JSON object per
//! line: the Burn side of the GPU backend decision (issue 25), peer `bench/gpu_ops_torch.py`
//! (same ops, same sizes, same order).
//!
//! - conv_stem: 3×3 conv 64→64 on [2, 64, 200, 200]; conv_neck: 3×3 conv 256→256 on
//!   [2, 256, 50, 50];
//! - ffn_matmul: [2·53294, 256] × [256, 2048] (the encoder FFN of `paper-r50` at 800²);
//! - msda_encoder / msda_decoder: the trainer's MSDA at `paper-r50` dimensions, batch 2,
//!   queries 53294 / 900: `host` (what the model runs: the CubeCL kernels on a GPU device, host
//!   loops on Flex) and `chunked` (tensor ops over chunks), each its own `impl` label.
//!
//! First row, `msda_parity`: both on the device against the Flex op (forward and the three
//! gradients, max abs difference; Flex's is tested against the naive loop in CI), at a small
//! size, so a run on a GPU also says whether its numbers are right: on a GPU with f32 atomics
//! this is where the kernels' native atomic-add path is checked (CI's lavapipe has none).
//!
//! Run: `cargo bench -p codetr-core --features vulkan --bench gpu_ops -- --device vulkan`
//! (`--device cpu` for the Flex device, `--small` for CPU-sized shapes). Times are medians of
//! `--reps` runs after two warm-ups; each run ends by reading back one scalar per gradient and
//! waiting for the device.

use std::time::Instant;

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use codetr_core::model::msda::{MsdaImpl, msda_core};
use codetr_core::model::msda_chunked::msda_chunked;

const PAPER_SHAPES: [[usize; 2]; 5] = [[200, 200], [100, 100], [50, 50], [25, 25], [13, 13]];
const SMALL_SHAPES: [[usize; 2]; 4] = [[32, 32], [16, 16], [8, 8], [4, 4]];

fn usage() -> ! {
    eprintln!(
        "usage: gpu_ops [--device cpu|vulkan|vulkan:N|vulkan-cpu|wgpu|wgpu:N|wgpu-cpu|cuda] [--small] [--reps N]"
    );
    std::process::exit(2)
}

/// Reads back one scalar, then waits for the device: everything queued before has run. (The
/// read alone is not enough: on the wgpu device (lavapipe) it returned while the device still
/// had seconds of queued work, which timed a 2.85 GFLOP matmul at 0.3 ms on a 2-core CPU.)
fn sync<const D: usize>(t: Tensor<D>) {
    let device = t.device();
    let _ = t.sum().into_data();
    if let Err(e) = device.sync() {
        eprintln!("gpu_ops: the device failed: {e}");
        std::process::exit(2)
    }
}

fn timed(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let mut device_name = "cpu".to_string();
    let (mut small, mut reps) = (false, 5usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => device_name = args.next().unwrap_or_else(|| usage()),
            "--small" => small = true,
            "--reps" => {
                reps = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--bench" => {} // passed by `cargo bench`
            _ => usage(),
        }
    }
    let base = match codetr_core::device::select(&device_name) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gpu_ops: {e}");
            std::process::exit(2)
        }
    };
    let dev = base.clone().autodiff();
    let shapes: Vec<[usize; 2]> = if small {
        SMALL_SHAPES.to_vec()
    } else {
        PAPER_SHAPES.to_vec()
    };
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let b = 2;
    let label = format!("burn-0.22.1 {device_name}");
    let build = codetr_core::device::build_summary();
    let emit = |mut row: serde_json::Value| {
        row["build"] = build.clone().into();
        row["impl"] = match row.get("variant").and_then(|v| v.as_str()) {
            Some(v) => format!("{label} {v}").into(),
            None => label.clone().into(),
        };
        println!("{row}");
    };
    let uniform = Distribution::Uniform(-1.0, 1.0);
    emit(msda_parity(&base));

    for (name, cin, hw) in [
        ("conv_stem", 64, if small { 40 } else { 200 }),
        ("conv_neck", 256, if small { 12 } else { 50 }),
    ] {
        let conv = Conv2dConfig::new([cin, cin], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(&dev);
        let x = Tensor::<4>::random([b, cin, hw, hw], uniform, &dev);
        let t = timed(reps, || {
            let x = x.clone().require_grad();
            let g = conv.forward(x.clone()).sum().backward();
            sync(x.grad(&g).expect("input gradient"));
            sync(conv.weight.grad(&g).expect("weight gradient"));
        });
        emit(serde_json::json!({"op": name, "shape": [b, cin, hw, hw], "fwd_bwd_s": t}));
    }

    let m = b * s;
    let x = Tensor::<2>::random([m, 256], uniform, &dev);
    let w = Param::from_tensor(Tensor::<2>::random([256, 2048], uniform, &dev));
    let t = timed(reps, || {
        let x = x.clone().require_grad();
        let g = x.clone().matmul(w.val()).sum().backward();
        sync(x.grad(&g).expect("input gradient"));
        sync(w.grad(&g).expect("weight gradient"));
    });
    emit(serde_json::json!({"op": "ffn_matmul", "shape": [m, 256, 2048], "fwd_bwd_s": t}));

    let (h, c, l, p) = (8, 32, shapes.len(), 4);
    let value = Tensor::<4>::random([b, s, h, c], uniform, &dev);
    for (name, q, imp) in [
        ("msda_encoder", s, MsdaImpl::Host),
        ("msda_encoder", s, MsdaImpl::Chunked),
        ("msda_decoder", 900, MsdaImpl::Host),
        ("msda_decoder", 900, MsdaImpl::Chunked),
    ] {
        let unit = Distribution::Uniform(0.0, 1.0);
        let loc = Tensor::<6>::random([b, q, h, l, p, 2], unit, &dev);
        let att = Tensor::<5>::random([b, q, h, l, p], unit, &dev);
        let fwd = timed(reps, || {
            sync(msda_core(
                value.clone().inner(),
                &shapes,
                loc.clone().inner(),
                att.clone().inner(),
                imp,
            ))
        });
        let fwd_bwd = timed(reps, || {
            let (v, lo, a) = (
                value.clone().require_grad(),
                loc.clone().require_grad(),
                att.clone().require_grad(),
            );
            let g = msda_core(v.clone(), &shapes, lo.clone(), a.clone(), imp)
                .sum()
                .backward();
            sync(v.grad(&g).expect("value gradient"));
            sync(lo.grad(&g).expect("location gradient"));
            sync(a.grad(&g).expect("weight gradient"));
        });
        emit(serde_json::json!({
            "op": name, "shape": [b, s, h, c, q, l, p], "fwd_s": fwd, "fwd_bwd_s": fwd_bwd,
            "variant": if imp == MsdaImpl::Chunked { Some("chunked") } else { None },
        }));
    }
}

/// The MSDA op (forward and gradients of `sum(out · r)`) on `device` vs Flex's host kernel, on
/// the same host-generated inputs: `[B=2, Q=50, H=4, Ch=8]`, 3 levels × 4 points, some points
/// outside the maps: the device's `Host` op (the CubeCL kernels on a GPU), and the chunked op
/// with budgets of one point per round and of one level per round.
fn msda_parity(device: &Device) -> serde_json::Value {
    let shapes = vec![[12usize, 10usize], [6, 5], [3, 3]];
    let (b, q, h, ch, p) = (2, 50, 4, 8, 4);
    let (l, s) = (
        shapes.len(),
        shapes.iter().map(|[h, w]| h * w).sum::<usize>(),
    );
    let mut rng = codetr_data::rng::Rng::new(11);
    let mut draw =
        |n: usize, lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.uniform(lo, hi)).collect() };
    let v = draw(b * s * h * ch, -1.0, 1.0);
    let loc = draw(b * q * h * l * p * 2, -0.1, 1.1);
    let w = draw(b * q * h * l * p, 0.0, 1.0);
    let r = draw(b * q * h * ch, -1.0, 1.0);
    // budget `None`: the device's Host op; `Some`: the chunked op.
    let run = |dev: &Device, budget: Option<usize>| -> [Vec<f32>; 4] {
        let dev = dev.clone().autodiff();
        let v =
            Tensor::<4>::from_data(TensorData::new(v.clone(), [b, s, h, ch]), &dev).require_grad();
        let lo = Tensor::<6>::from_data(TensorData::new(loc.clone(), [b, q, h, l, p, 2]), &dev)
            .require_grad();
        let a = Tensor::<5>::from_data(TensorData::new(w.clone(), [b, q, h, l, p]), &dev)
            .require_grad();
        let rt = Tensor::<3>::from_data(TensorData::new(r.clone(), [b, q, h * ch]), &dev);
        let out = match budget {
            Some(budget) => msda_chunked(v.clone(), &shapes, lo.clone(), a.clone(), budget),
            None => msda_core(v.clone(), &shapes, lo.clone(), a.clone(), MsdaImpl::Host),
        };
        let g = (out.clone() * rt).sum().backward();
        let host = |d: TensorData| d.convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
        [
            host(out.inner().into_data()),
            v.grad(&g).map(|t| host(t.into_data())).unwrap_or_default(),
            lo.grad(&g).map(|t| host(t.into_data())).unwrap_or_default(),
            a.grad(&g).map(|t| host(t.into_data())).unwrap_or_default(),
        ]
    };
    let diff = |x: &[f32], y: &[f32]| -> f64 {
        if x.len() != y.len() || x.is_empty() {
            return f64::INFINITY;
        }
        x.iter()
            .zip(y)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max)
    };
    let want = run(&Device::flex(), None);
    let mut row = serde_json::json!({"op": "msda_parity", "shape": [b, s, h, ch, q, l, p]});
    for (tag, budget) in [
        ("host", None),
        ("one_point", Some(1)),
        ("one_level", Some(usize::MAX)),
    ] {
        let got = run(device, budget);
        for (k, name) in ["forward", "grad_value", "grad_loc", "grad_weights"]
            .iter()
            .enumerate()
        {
            row[format!("{tag}_{name}_max_abs_diff")] = diff(&got[k], &want[k]).into();
        }
    }
    row
}
