//! The product's MSDA CubeCL kernels (`core/src/model/msda_cube.rs`, Burn 0.22 / CubeCL 0.11)
//! on Burn 0.21 / CubeCL 0.10, so that the backend decision compares the same kernels on both
//! backends, not kernels against a tensor program. Same units, same arithmetic; what differs is
//! the API: the runtime is a type parameter here, and the bit casts are `from_bits`/`to_bits`.
//! Parity with the chunked tensor program (`crate::msda`) is this bench's `msda_parity` row.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use cubecl::features::AtomicUsage;
use cubecl::ir::{FloatKind, StorageType, Type};
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

/// The shapes of one call: value `[B, S, H, Ch]`, locations `[B, Q, H, L, P, 2]`, weights
/// `[B, Q, H, L, P]`, the output and its gradient `[B, Q, H·Ch]`.
#[derive(Debug, Clone)]
pub struct Dims {
    pub b: usize,
    pub s: usize,
    pub h: usize,
    pub ch: usize,
    pub q: usize,
    pub l: usize,
    pub p: usize,
    pub shapes: Vec<[usize; 2]>,
}

#[derive(CubeLaunch, CubeType)]
struct MsdaArgs {
    units: usize,
    qh: usize,
    heads: usize,
    channels: usize,
    tokens: usize,
    levels: usize,
    points: usize,
    level: usize,
    level_h: usize,
    level_w: usize,
    level_start: usize,
}

#[derive(CubeType)]
struct Taps {
    fx: f32,
    fy: f32,
    in00: bool,
    in10: bool,
    in01: bool,
    in11: bool,
    r00: usize,
    r10: usize,
    r01: usize,
    r11: usize,
}

#[cube]
fn corner(x: i32, y: i32, row0: usize, args: &MsdaArgs) -> (bool, usize) {
    let wi = i32::cast_from(args.level_w);
    let hi = i32::cast_from(args.level_h);
    let inside = x >= 0 && x < wi && y >= 0 && y < hi;
    let token = select(inside, usize::cast_from(y * wi + x), 0usize);
    (inside, (row0 + token * args.heads) * args.channels)
}

#[cube]
fn taps(loc: &Tensor<f32>, sample: usize, row0: usize, args: &MsdaArgs) -> Taps {
    let wf = f32::cast_from(args.level_w);
    let hf = f32::cast_from(args.level_h);
    let x = clamp(loc[sample * 2] * wf - 0.5, -2.0, wf + 1.0);
    let y = clamp(loc[sample * 2 + 1] * hf - 0.5, -2.0, hf + 1.0);
    let xf = x.floor();
    let yf = y.floor();
    let x0 = i32::cast_from(xf);
    let y0 = i32::cast_from(yf);
    let (in00, r00) = corner(x0, y0, row0, args);
    let (in10, r10) = corner(x0 + 1, y0, row0, args);
    let (in01, r01) = corner(x0, y0 + 1, row0, args);
    let (in11, r11) = corner(x0 + 1, y0 + 1, row0, args);
    Taps {
        fx: x - xf,
        fy: y - yf,
        in00,
        in10,
        in01,
        in11,
        r00,
        r10,
        r01,
        r11,
    }
}

#[cube]
fn query_row(bqh: usize, args: &MsdaArgs) -> usize {
    let b = bqh / args.qh;
    (b * args.tokens + args.level_start) * args.heads + bqh % args.heads
}

#[cube(launch_unchecked, address_type = "dynamic")]
fn forward_kernel(
    value: &Tensor<f32>,
    loc: &Tensor<f32>,
    weight: &Tensor<f32>,
    out: &mut Tensor<f32>,
    args: &MsdaArgs,
) {
    if ABSOLUTE_POS >= args.units {
        terminate!();
    }
    let c = ABSOLUTE_POS % args.channels;
    let bqh = ABSOLUTE_POS / args.channels;
    let row0 = query_row(bqh, args);
    let mut acc = 0.0f32;
    for p in 0..args.points {
        let sample = (bqh * args.levels + args.level) * args.points + p;
        let t = taps(loc, sample, row0, args);
        let gx = 1.0 - t.fx;
        let gy = 1.0 - t.fy;
        let v00 = select(t.in00, value[t.r00 + c], 0.0);
        let v10 = select(t.in10, value[t.r10 + c], 0.0);
        let v01 = select(t.in01, value[t.r01 + c], 0.0);
        let v11 = select(t.in11, value[t.r11 + c], 0.0);
        acc += weight[sample]
            * (gx * gy * v00 + t.fx * gy * v10 + gx * t.fy * v01 + t.fx * t.fy * v11);
    }
    out[ABSOLUTE_POS] += acc;
}

#[cube]
trait AddF32: Send + Sync + 'static {
    type Cell: Numeric;
    fn add(cell: &mut Atomic<Self::Cell>, v: f32);
}

#[derive(CubeType)]
struct NativeAdd;

#[derive(CubeType)]
struct BitsAdd;

#[cube]
impl AddF32 for NativeAdd {
    type Cell = f32;
    fn add(cell: &mut Atomic<f32>, v: f32) {
        cell.fetch_add(v);
    }
}

#[cube]
impl AddF32 for BitsAdd {
    type Cell = u32;
    fn add(cell: &mut Atomic<u32>, v: f32) {
        let mut seen = cell.load();
        loop {
            let sum = (f32::from_bits(seen) + v).to_bits();
            let before = cell.compare_exchange_weak(seen, sum);
            if before == seen {
                break;
            }
            seen = before;
        }
    }
}

#[cube(launch_unchecked, address_type = "dynamic")]
fn value_grad_kernel<Op: AddF32>(
    loc: &Tensor<f32>,
    weight: &Tensor<f32>,
    grad: &Tensor<f32>,
    grad_value: &mut Tensor<Atomic<Op::Cell>>,
    args: &MsdaArgs,
) {
    if ABSOLUTE_POS >= args.units {
        terminate!();
    }
    let c = ABSOLUTE_POS % args.channels;
    let bqh = ABSOLUTE_POS / args.channels;
    let row0 = query_row(bqh, args);
    let g = grad[ABSOLUTE_POS];
    for p in 0..args.points {
        let sample = (bqh * args.levels + args.level) * args.points + p;
        let ag = weight[sample] * g;
        let t = taps(loc, sample, row0, args);
        let gx = 1.0 - t.fx;
        let gy = 1.0 - t.fy;
        if t.in00 {
            Op::add(&mut grad_value[t.r00 + c], ag * gx * gy);
        }
        if t.in10 {
            Op::add(&mut grad_value[t.r10 + c], ag * t.fx * gy);
        }
        if t.in01 {
            Op::add(&mut grad_value[t.r01 + c], ag * gx * t.fy);
        }
        if t.in11 {
            Op::add(&mut grad_value[t.r11 + c], ag * t.fx * t.fy);
        }
    }
}

#[cube(launch_unchecked, address_type = "dynamic")]
fn sample_grad_kernel(
    value: &Tensor<f32>,
    loc: &Tensor<f32>,
    weight: &Tensor<f32>,
    grad: &Tensor<f32>,
    grad_loc: &mut Tensor<f32>,
    grad_weight: &mut Tensor<f32>,
    args: &MsdaArgs,
) {
    if ABSOLUTE_POS >= args.units {
        terminate!();
    }
    let p = ABSOLUTE_POS % args.points;
    let bqh = ABSOLUTE_POS / args.points;
    let sample = (bqh * args.levels + args.level) * args.points + p;
    let t = taps(loc, sample, query_row(bqh, args), args);
    let rg = bqh * args.channels;
    let mut d00 = 0.0f32;
    let mut d10 = 0.0f32;
    let mut d01 = 0.0f32;
    let mut d11 = 0.0f32;
    for c in 0..args.channels {
        let g = grad[rg + c];
        d00 += g * select(t.in00, value[t.r00 + c], 0.0);
        d10 += g * select(t.in10, value[t.r10 + c], 0.0);
        d01 += g * select(t.in01, value[t.r01 + c], 0.0);
        d11 += g * select(t.in11, value[t.r11 + c], 0.0);
    }
    let gx = 1.0 - t.fx;
    let gy = 1.0 - t.fy;
    grad_weight[sample] = gx * gy * d00 + t.fx * gy * d10 + gx * t.fy * d01 + t.fx * t.fy * d11;
    let dx = gy * (d10 - d00) + t.fy * (d11 - d01);
    let dy = gx * (d01 - d00) + t.fx * (d11 - d10);
    let a = weight[sample];
    grad_loc[sample * 2] = a * dx * f32::cast_from(args.level_w);
    grad_loc[sample * 2 + 1] = a * dy * f32::cast_from(args.level_h);
}

/// Each level's index, map size and first token.
fn levels(d: &Dims) -> Vec<(usize, usize, usize, usize)> {
    let mut start = 0;
    d.shapes
        .iter()
        .enumerate()
        .map(|(i, &[h, w])| {
            let lv = (i, h, w, start);
            start += h * w;
            lv
        })
        .collect()
}

fn args<R: CubeRuntime>(
    d: &Dims,
    (index, h, w, start): (usize, usize, usize, usize),
    units: usize,
) -> MsdaArgsLaunch<R> {
    MsdaArgsLaunch::new(
        units,
        d.q * d.h,
        d.h,
        d.ch,
        d.s,
        d.l,
        d.p,
        index,
        h,
        w,
        start,
    )
}

fn launch_shape<R: CubeRuntime>(t: &CubeTensor<R>, units: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&t.client, units);
    (calculate_cube_count_elemwise(&t.client, units, dim), dim)
}

fn address<R: CubeRuntime>(ts: &[&CubeTensor<R>]) -> AddressType {
    ts.iter()
        .map(|t| t.required_address_type())
        .max()
        .unwrap_or_default()
}

/// Whether the device adds f32 atomically (else the value gradient uses compare-exchange).
pub fn adds_f32_atomically<R: CubeRuntime>(t: &CubeTensor<R>) -> bool {
    t.client
        .properties()
        .atomic_type_usage(Type::new(StorageType::Atomic(FloatKind::F32.into())))
        .contains(AtomicUsage::Add)
}

/// Forward: `[B, Q, H·Ch]`.
pub fn forward<R: CubeRuntime>(
    d: &Dims,
    value: CubeTensor<R>,
    loc: CubeTensor<R>,
    weight: CubeTensor<R>,
) -> CubeTensor<R> {
    let (value, loc, weight) = (
        into_contiguous(value),
        into_contiguous(loc),
        into_contiguous(weight),
    );
    let units = d.b * d.q * d.h * d.ch;
    let out = zeros_client(
        value.client.clone(),
        value.device.clone(),
        Shape::new([d.b, d.q, d.h * d.ch]),
        DType::F32,
    );
    let (count, dim) = launch_shape(&value, units);
    let addr = address(&[&value, &loc, &weight, &out]);
    for lv in levels(d) {
        // SAFETY: as in the product's kernels: units cover `out` exactly, sample indices stay
        // within `[B·Q·H·L·P]`, and corners outside the map read token 0.
        unsafe {
            forward_kernel::launch_unchecked::<R>(
                &value.client,
                count.clone(),
                dim,
                addr,
                value.clone().into_tensor_arg(),
                loc.clone().into_tensor_arg(),
                weight.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                args(d, lv, units),
            );
        }
    }
    out
}

/// Gradients w.r.t. (value, locations, weights) given the output gradient `grad`.
pub fn backward<R: CubeRuntime>(
    d: &Dims,
    value: CubeTensor<R>,
    loc: CubeTensor<R>,
    weight: CubeTensor<R>,
    grad: CubeTensor<R>,
    native: bool,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let (value, loc, weight, grad) = (
        into_contiguous(value),
        into_contiguous(loc),
        into_contiguous(weight),
        into_contiguous(grad),
    );
    let (client, device) = (value.client.clone(), value.device.clone());
    let grad_value = zeros_client(
        client.clone(),
        device.clone(),
        Shape::new([d.b, d.s, d.h, d.ch]),
        DType::F32,
    );
    let grad_loc = empty_device_dtype(
        client.clone(),
        device.clone(),
        Shape::new([d.b, d.q, d.h, d.l, d.p, 2]),
        DType::F32,
    );
    let grad_weight = empty_device_dtype(
        client.clone(),
        device,
        Shape::new([d.b, d.q, d.h, d.l, d.p]),
        DType::F32,
    );
    let addr = address(&[&value, &loc, &weight, &grad, &grad_value, &grad_loc]);
    let value_units = d.b * d.q * d.h * d.ch;
    let sample_units = d.b * d.q * d.h * d.p;
    let (vcount, vdim) = launch_shape(&value, value_units);
    let (scount, sdim) = launch_shape(&value, sample_units);
    for lv in levels(d) {
        // SAFETY: as in `forward`; every sample of every level is written once, so the
        // uninitialised gradient buffers end fully written.
        unsafe {
            let value_grad = match native {
                true => value_grad_kernel::launch_unchecked::<NativeAdd, R>,
                false => value_grad_kernel::launch_unchecked::<BitsAdd, R>,
            };
            value_grad(
                &client,
                vcount.clone(),
                vdim,
                addr,
                loc.clone().into_tensor_arg(),
                weight.clone().into_tensor_arg(),
                grad.clone().into_tensor_arg(),
                grad_value.clone().into_tensor_arg(),
                args(d, lv, value_units),
            );
            sample_grad_kernel::launch_unchecked::<R>(
                &client,
                scount.clone(),
                sdim,
                addr,
                value.clone().into_tensor_arg(),
                loc.clone().into_tensor_arg(),
                weight.clone().into_tensor_arg(),
                grad.clone().into_tensor_arg(),
                grad_loc.clone().into_tensor_arg(),
                grad_weight.clone().into_tensor_arg(),
                args(d, lv, sample_units),
            );
        }
    }
    (grad_value, grad_loc, grad_weight)
}
