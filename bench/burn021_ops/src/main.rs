//! Training ops at detector sizes on Burn 0.21, forward + backward, one JSON object per line:
//! the same ops, sizes and order as `trainer/benches/gpu_ops.rs` (Burn 0.22) and
//! `bench/gpu_ops_torch.py` (PyTorch), so that the three are read side by side.
//!
//! MSDA here is the chunked formulation of `core/src/model/msda_chunked.rs` (gather the four
//! corners of a few points of one level at a time, weight, sum; the rows gathered as in
//! `core/src/model/rows.rs`) with Burn's own autodiff for the
//! backward: Burn 0.21 cannot run the trainer, so this measures what its backend does with the
//! same tensor program, not our hand-written backward.
//!
//! With a CubeCL device (`cuda`, or `wgpu` for the rehearsal on Mesa's lavapipe) it also times
//! the product's MSDA kernels ported to this Burn (`msda_cube.rs`), rows with `impl` "…
//! kernels", the like-for-like counterpart of `gpu_ops`' kernel rows, and checks them against
//! the chunked program on the same device (`msda_parity`).
//!
//! Usage: burn021-ops [--device cuda|wgpu-cpu|cpu] [--small] [--reps N]

use std::time::Instant;

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::backend::AutodiffBackend;

#[cfg(feature = "kernels")]
mod msda_cube;

const PAPER_SHAPES: [[usize; 2]; 5] = [[200, 200], [100, 100], [50, 50], [25, 25], [13, 13]];
const SMALL_SHAPES: [[usize; 2]; 4] = [[32, 32], [16, 16], [8, 8], [4, 4]];

fn usage() -> ! {
    eprintln!("usage: burn021-ops [--device cuda|wgpu-cpu|cpu] [--small] [--reps N]");
    std::process::exit(2)
}

fn sync<B: Backend, const D: usize>(t: Tensor<B, D>) {
    let device = t.device();
    let _ = t.sum().into_data();
    // A scalar read need not wait for all queued work (on wgpu it did not): wait for the device.
    let _ = B::sync(&device);
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

/// MSDA over chunks of one level's points: value `[B, S, H, C]`, locations
/// `[B, Q, H, L, P, 2]` in [0, 1], weights `[B, Q, H, L, P]` → `[B, Q, H·C]`.
fn msda<B: Backend>(
    value: Tensor<B, 4>,
    shapes: &[[usize; 2]],
    loc: Tensor<B, 6>,
    att: Tensor<B, 5>,
    points_per_chunk: usize,
) -> Tensor<B, 3> {
    let device = value.device();
    let [b, s, h, c] = value.dims();
    let [_, q, _, _, p, _] = loc.dims();
    let rows = value.permute([0, 2, 1, 3]).reshape([b * h * s, c]);
    let bqh = b * q * h;
    let mut out = Tensor::<B, 3>::zeros([bqh, 1, c], &device);
    let mut start = 0usize;
    for (lvl, &[hl, wl]) in shapes.iter().enumerate() {
        let base = (Tensor::<B, 1, Int>::arange(0..b as i64, &device).reshape([b, 1, 1, 1])
            * h as i64
            + Tensor::<B, 1, Int>::arange(0..h as i64, &device).reshape([1, 1, h, 1]))
            * s as i64
            + start as i64;
        let mut p0 = 0;
        while p0 < p {
            let k = points_per_chunk.min(p - p0);
            let dims = [b, q, h, k];
            let base = base.clone().expand(dims);
            let l5 = loc
                .clone()
                .narrow(3, lvl, 1)
                .narrow(4, p0, k)
                .reshape([b, q, h, k, 2]);
            let x = l5.clone().narrow(4, 0, 1).reshape(dims) * wl as f64 - 0.5;
            let y = l5.narrow(4, 1, 1).reshape(dims) * hl as f64 - 0.5;
            let (x0, y0) = (x.clone().floor().detach(), y.clone().floor().detach());
            let (fx, fy) = (x - x0.clone(), y - y0.clone());
            let (x0, y0) = (x0.int(), y0.int());
            let a = att.clone().narrow(3, lvl, 1).narrow(4, p0, k).reshape(dims);
            let mut idx = Vec::with_capacity(4);
            let mut wgt = Vec::with_capacity(4);
            for (dx, dy) in [(0i64, 0i64), (1, 0), (0, 1), (1, 1)] {
                let xi = x0.clone() + dx;
                let yi = y0.clone() + dy;
                let valid = xi
                    .clone()
                    .greater_equal_elem(0)
                    .bool_and(xi.clone().lower_elem(wl as i64))
                    .bool_and(yi.clone().greater_equal_elem(0))
                    .bool_and(yi.clone().lower_elem(hl as i64));
                let row =
                    (yi * wl as i64 + xi + base.clone()).mask_fill(valid.clone().bool_not(), 0);
                let wx = if dx == 0 {
                    fx.clone().neg() + 1.0
                } else {
                    fx.clone()
                };
                let wy = if dy == 0 {
                    fy.clone().neg() + 1.0
                } else {
                    fy.clone()
                };
                idx.push(row);
                wgt.push(wx * wy * valid.float() * a.clone());
            }
            let n = bqh * k * 4;
            let idx: Tensor<B, 5, Int> = Tensor::stack(idx, 4);
            let wgt: Tensor<B, 5> = Tensor::stack(wgt, 4);
            // `gather` with the index broadcast over the channels, as core's `rows::gather_rows`
            // does off the CPU: its backward is a (atomic) scatter with one thread per element,
            // where `select`'s is `select_assign`, one thread per channel looping over all n.
            let idx = idx.reshape([n, 1]).expand([n, c]);
            let sampled = rows.clone().gather(0, idx).reshape([bqh, k * 4, c]);
            out = out + wgt.reshape([bqh, 1, k * 4]).matmul(sampled);
            p0 += k;
        }
        start += hl * wl;
    }
    out.reshape([b, q, h * c])
}

/// The bench's value, locations and weights for MSDA with `q` queries at these level shapes.
fn msda_inputs<B: Backend>(
    shapes: &[[usize; 2]],
    q: usize,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 6>, Tensor<B, 5>) {
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let (b, h, c, l, p) = (2, 8, 32, shapes.len(), 4);
    let uniform = Distribution::Uniform(-1.0, 1.0);
    let unit = Distribution::Uniform(0.0, 1.0);
    (
        Tensor::random([b, s, h, c], uniform, device),
        Tensor::random([b, q, h, l, p, 2], unit, device),
        Tensor::random([b, q, h, l, p], unit, device),
    )
}

fn run<B: AutodiffBackend>(device: &B::Device, label: &str, small: bool, reps: usize) {
    let shapes: Vec<[usize; 2]> = if small {
        SMALL_SHAPES.to_vec()
    } else {
        PAPER_SHAPES.to_vec()
    };
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let b = 2;
    let emit = |mut row: serde_json::Value| {
        row["impl"] = label.into();
        println!("{row}");
    };
    let uniform = Distribution::Uniform(-1.0, 1.0);
    for (name, cin, hw) in [
        ("conv_stem", 64, if small { 40 } else { 200 }),
        ("conv_neck", 256, if small { 12 } else { 50 }),
    ] {
        let conv = Conv2dConfig::new([cin, cin], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init::<B>(device);
        let x = Tensor::<B, 4>::random([b, cin, hw, hw], uniform, device);
        let t = timed(reps, || {
            let x = x.clone().require_grad();
            let g = conv.forward(x.clone()).sum().backward();
            sync(x.grad(&g).expect("input gradient"));
            sync(conv.weight.grad(&g).expect("weight gradient"));
        });
        emit(serde_json::json!({"op": name, "shape": [b, cin, hw, hw], "fwd_bwd_s": t}));
    }
    let m = b * s;
    let x = Tensor::<B, 2>::random([m, 256], uniform, device);
    let w = Param::from_tensor(Tensor::<B, 2>::random([256, 2048], uniform, device));
    let t = timed(reps, || {
        let x = x.clone().require_grad();
        let g = x.clone().matmul(w.val()).sum().backward();
        sync(x.grad(&g).expect("input gradient"));
        sync(w.grad(&g).expect("weight gradient"));
    });
    emit(serde_json::json!({"op": "ffn_matmul", "shape": [m, 256, 2048], "fwd_bwd_s": t}));

    let (h, c, p) = (8, 32, 4);
    for (name, q) in [("msda_encoder", s), ("msda_decoder", 900)] {
        // One point per chunk at the encoder's size (the trainer's 2^26 budget), all four at
        // the decoder's.
        let k = if q * b * h * 4 * c > 1 << 26 { 1 } else { p };
        let (value, loc, att) = msda_inputs::<B>(&shapes, q, device);
        let fwd = timed(reps, || {
            sync(msda(
                value.clone().inner(),
                &shapes,
                loc.clone().inner(),
                att.clone().inner(),
                k,
            ))
        });
        let fwd_bwd = timed(reps, || {
            let (v, lo, a) = (
                value.clone().require_grad(),
                loc.clone().require_grad(),
                att.clone().require_grad(),
            );
            let g = msda(v.clone(), &shapes, lo.clone(), a.clone(), k)
                .sum()
                .backward();
            sync(v.grad(&g).expect("value gradient"));
            sync(lo.grad(&g).expect("location gradient"));
            sync(a.grad(&g).expect("weight gradient"));
        });
        emit(serde_json::json!({
            "op": name, "shape": [b, s, h, c, q, shapes.len(), p], "fwd_s": fwd, "fwd_bwd_s": fwd_bwd,
        }));
    }
}

/// The MSDA kernels (`msda_cube.rs`) on a CubeCL device: the forward, and the forward plus the
/// backward of `sum()` (output gradient all ones, as autodiff would give), at the sizes and
/// with the inputs of [`run`]'s chunked rows; then `msda_parity`: kernels against the chunked
/// program's forward and autodiff gradients on the same device.
#[cfg(feature = "kernels")]
fn kernel_rows<R, BT>(device: &R::Device, label: &str, small: bool, reps: usize)
where
    R: burn_cubecl::CubeRuntime,
    BT: burn_cubecl::BoolElement,
{
    use burn::tensor::TensorPrimitive;
    use burn_cubecl::CubeBackend;
    use burn_cubecl::tensor::CubeTensor;
    type Inner<R, BT> = CubeBackend<R, f32, i32, BT>;

    fn prim<R: burn_cubecl::CubeRuntime, BT: burn_cubecl::BoolElement, const D: usize>(
        t: Tensor<Inner<R, BT>, D>,
    ) -> CubeTensor<R> {
        t.into_primitive().tensor()
    }
    fn back<R: burn_cubecl::CubeRuntime, BT: burn_cubecl::BoolElement, const D: usize>(
        t: CubeTensor<R>,
    ) -> Tensor<Inner<R, BT>, D> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    let shapes: Vec<[usize; 2]> = if small {
        SMALL_SHAPES.to_vec()
    } else {
        PAPER_SHAPES.to_vec()
    };
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let (b, h, c, p) = (2, 8, 32, 4);
    let dims = |q| msda_cube::Dims {
        b,
        s,
        h,
        ch: c,
        q,
        l: shapes.len(),
        p,
        shapes: shapes.clone(),
    };
    let kernels = format!("{label} kernels");
    for (name, q) in [("msda_encoder", s), ("msda_decoder", 900)] {
        let d = dims(q);
        let (value, loc, att) = msda_inputs::<Inner<R, BT>>(&shapes, q, device);
        let native = msda_cube::adds_f32_atomically(&prim(value.clone()));
        let fwd = timed(reps, || {
            let out = msda_cube::forward(
                &d,
                prim(value.clone()),
                prim(loc.clone()),
                prim(att.clone()),
            );
            sync(back::<R, BT, 3>(out))
        });
        let fwd_bwd = timed(reps, || {
            let out = msda_cube::forward(
                &d,
                prim(value.clone()),
                prim(loc.clone()),
                prim(att.clone()),
            );
            let grad = back::<R, BT, 3>(out).ones_like();
            let (gv, gl, ga) = msda_cube::backward(
                &d,
                prim(value.clone()),
                prim(loc.clone()),
                prim(att.clone()),
                prim(grad),
                native,
            );
            sync(back::<R, BT, 4>(gv));
            sync(back::<R, BT, 6>(gl));
            sync(back::<R, BT, 5>(ga));
        });
        let row = serde_json::json!({
            "op": name, "impl": kernels, "shape": [b, s, h, c, q, shapes.len(), p],
            "fwd_s": fwd, "fwd_bwd_s": fwd_bwd, "native_atomic_add": native,
        });
        println!("{row}");
    }

    // Parity at the decoder's query count, all points in one chunk.
    type Ad<R, BT> = burn::backend::Autodiff<Inner<R, BT>>;
    let q = 300;
    let d = dims(q);
    let (value, loc, att) = msda_inputs::<Inner<R, BT>>(&shapes, q, device);
    let max_diff = |x: Tensor<Inner<R, BT>, 1>, y: Tensor<Inner<R, BT>, 1>| -> f32 {
        (x - y).abs().max().into_scalar()
    };
    let (v, lo, a) = (
        Tensor::<Ad<R, BT>, 4>::from_inner(value.clone()).require_grad(),
        Tensor::<Ad<R, BT>, 6>::from_inner(loc.clone()).require_grad(),
        Tensor::<Ad<R, BT>, 5>::from_inner(att.clone()).require_grad(),
    );
    let want = msda(v.clone(), &shapes, lo.clone(), a.clone(), p);
    let g = want.clone().sum().backward();
    let native = msda_cube::adds_f32_atomically(&prim(value.clone()));
    let got = back::<R, BT, 3>(msda_cube::forward(
        &d,
        prim(value.clone()),
        prim(loc.clone()),
        prim(att.clone()),
    ));
    let grad = got.ones_like();
    let (gv, gl, ga) =
        msda_cube::backward(&d, prim(value), prim(loc), prim(att), prim(grad), native);
    let flat = |t: Tensor<Inner<R, BT>, 6>| t.flatten::<1>(0, 5);
    let scale = |t: Tensor<Inner<R, BT>, 1>| -> f32 { t.abs().max().into_scalar() };
    let (want_gv, want_gl, want_ga) = (
        v.grad(&g).expect("value gradient").flatten::<1>(0, 3),
        flat(lo.grad(&g).expect("location gradient")),
        a.grad(&g).expect("weight gradient").flatten::<1>(0, 4),
    );
    let row = serde_json::json!({
        "op": "msda_parity", "impl": kernels, "shape": [b, s, h, c, q, shapes.len(), p],
        "against": "chunked tensor program, Burn autodiff, same device",
        "native_atomic_add": native,
        // The reference's largest magnitude beside each difference, to read it relatively.
        "forward_max_abs": scale(want.clone().inner().flatten(0, 2)),
        "forward_max_abs_diff": max_diff(got.flatten(0, 2), want.inner().flatten(0, 2)),
        "grad_value_max_abs": scale(want_gv.clone()),
        "grad_value_max_abs_diff": max_diff(back::<R, BT, 4>(gv).flatten(0, 3), want_gv),
        "grad_loc_max_abs": scale(want_gl.clone()),
        "grad_loc_max_abs_diff": max_diff(flat(back::<R, BT, 6>(gl)), want_gl),
        "grad_weights_max_abs": scale(want_ga.clone()),
        "grad_weights_max_abs_diff": max_diff(back::<R, BT, 5>(ga).flatten(0, 4), want_ga),
    });
    println!("{row}");
}

fn main() {
    let mut device = "cpu".to_string();
    let (mut small, mut reps) = (false, 5usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => device = args.next().unwrap_or_else(|| usage()),
            "--small" => small = true,
            "--reps" => {
                reps = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    match device.as_str() {
        "cpu" => {
            type Cpu = burn::backend::Autodiff<burn::backend::NdArray>;
            run::<Cpu>(&Default::default(), "burn-0.21.0 ndarray", small, reps)
        }
        #[cfg(feature = "cuda")]
        "cuda" => {
            type Gpu = burn::backend::Autodiff<burn::backend::Cuda>;
            let d = burn::backend::cuda::CudaDevice::new(0);
            run::<Gpu>(&d, "burn-0.21.0 cuda", small, reps);
            kernel_rows::<cubecl::cuda::CudaRuntime, u8>(&d, "burn-0.21.0 cuda", small, reps)
        }
        // A software adapter (Mesa's lavapipe): the rehearsal of the kernels' port, not a
        // GPU figure.
        #[cfg(feature = "wgpu")]
        "wgpu-cpu" => {
            type Gpu = burn::backend::Autodiff<burn::backend::Wgpu>;
            let d = burn::backend::wgpu::WgpuDevice::Cpu;
            run::<Gpu>(&d, "burn-0.21.0 wgpu-cpu", small, reps);
            kernel_rows::<burn::backend::wgpu::WgpuRuntime, u32>(
                &d,
                "burn-0.21.0 wgpu-cpu",
                small,
                reps,
            )
        }
        other => {
            eprintln!(
                "burn021-ops: device {other:?} not in this build (cpu; cuda with --features cuda; \
                 wgpu-cpu with --features wgpu)"
            );
            std::process::exit(2)
        }
    }
}
