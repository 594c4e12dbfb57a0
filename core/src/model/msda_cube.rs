//! MSDA as CubeCL kernels (CUDA, Vulkan, wgpu): what `Host` means on a GPU.
//!
//! Why: the tensor formulations materialise every sample's four corner rows (`msda_chunked`
//! bounds them to one chunk, `Gather` keeps them all); on a GPU that is bandwidth spent on
//! `[B·Q·H·k·4, Ch]` writes and reads, plus a dozen launches per chunk. These kernels read each
//! corner value once and write only the result, like the official CUDA op:
//! - forward: one unit per output element `(b, q, h, c)`, looping over one level's points;
//!   consecutive units are consecutive channels, so a warp reads a corner's 32 channels as one
//!   coalesced row;
//! - value gradient: the same units, each adding `a·w·g` into its corners' rows atomically
//!   (native f32 atomic add where the device has it; otherwise a compare-exchange loop on the
//!   bits: WGSL has no float atomics);
//! - location and weight gradients: one unit per sample `(b, q, h, l, p)`, looping over the
//!   channels for the four corner dot products; no atomics.
//!
//! Each kernel is launched once per level (the level's shape and first token are scalars), so
//! nothing is compiled per image size. Semantics are [`super::msda::msda_naive`]'s (bilinear,
//! zero padding, `align_corners = false`); gradients are [`super::msda_host`]'s.

use burn::backend::Cube;
use burn::tensor::{DType, Shape, Tensor as BurnTensor};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use cubecl::features::AtomicUsage;
use cubecl::ir::{ElemType, FloatKind, Type};
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use super::msda_dims::MsdaDims;

/// One level's scalars, shared by the kernels.
#[derive(Debug, Clone, Copy)]
struct Level {
    /// Index of the level among `L`.
    index: usize,
    /// Height and width of its map.
    h: usize,
    w: usize,
    /// Its first token in the flattened value sequence.
    start: usize,
}

/// The first corner of a sampling point on a `w × h` map: `(x0, y0, fx, fy)` with the point at
/// pixel `(x0 + fx, y0 + fy)`. Coordinates are clamped to `[-2, size + 1]` first, which moves
/// no sample (every corner out there is outside the map) but keeps the integer cast defined.
#[cube]
fn first_corner(u: f32, v: f32, w: usize, h: usize) -> (i32, i32, f32, f32) {
    let wf = f32::cast_from(w);
    let hf = f32::cast_from(h);
    let x = clamp(u * wf - 0.5, -2.0, wf + 1.0);
    let y = clamp(v * hf - 0.5, -2.0, hf + 1.0);
    let x0 = x.floor();
    let y0 = y.floor();
    (i32::cast_from(x0), i32::cast_from(y0), x - x0, y - y0)
}

/// Whether corner `(x, y)` lies on the `w × h` map, and its token within the level (0 when
/// outside, so that a read of it stays in bounds).
#[cube]
fn corner_token(x: i32, y: i32, w: usize, h: usize) -> (bool, usize) {
    let wi = i32::cast_from(w);
    let hi = i32::cast_from(h);
    let inside = x >= 0 && x < wi && y >= 0 && y < hi;
    let token = select(inside, usize::cast_from(y * wi + x), 0usize);
    (inside, token)
}

/// Forward for one level, accumulated into `out` `[B, Q, H, Ch]` (contiguous). `value`
/// `[B, S, H, Ch]`, `loc` `[B, Q, H, L, P, 2]`, `weight` `[B, Q, H, L, P]`, all contiguous.
#[cube(launch_unchecked, address_type = "dynamic")]
fn forward_kernel(
    value: &Tensor<f32>,
    loc: &Tensor<f32>,
    weight: &Tensor<f32>,
    out: &mut Tensor<f32>,
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
) {
    if ABSOLUTE_POS >= units {
        terminate!();
    }
    let c = ABSOLUTE_POS % channels;
    let bqh = ABSOLUTE_POS / channels;
    let head = bqh % heads;
    let b = bqh / qh;
    // value[b, level_start + t, head, c] = value[row(t)]
    let row0 = (b * tokens + level_start) * heads + head;
    let mut acc = 0.0f32;
    for p in 0..points {
        let sample = (bqh * levels + level) * points + p;
        let a = weight[sample];
        let (x0, y0, fx, fy) = first_corner(loc[sample * 2], loc[sample * 2 + 1], level_w, level_h);
        let gx = 1.0 - fx;
        let gy = 1.0 - fy;
        let (i00, t00) = corner_token(x0, y0, level_w, level_h);
        let (i10, t10) = corner_token(x0 + 1, y0, level_w, level_h);
        let (i01, t01) = corner_token(x0, y0 + 1, level_w, level_h);
        let (i11, t11) = corner_token(x0 + 1, y0 + 1, level_w, level_h);
        let v00 = select(i00, value[((row0 + t00 * heads) * channels) + c], 0.0);
        let v10 = select(i10, value[((row0 + t10 * heads) * channels) + c], 0.0);
        let v01 = select(i01, value[((row0 + t01 * heads) * channels) + c], 0.0);
        let v11 = select(i11, value[((row0 + t11 * heads) * channels) + c], 0.0);
        acc += a * (gx * gy * v00 + fx * gy * v10 + gx * fy * v01 + fx * fy * v11);
    }
    out[ABSOLUTE_POS] += acc;
}

/// Value gradient for one level with native f32 atomic adds into `grad_value`
/// `[B, S, H, Ch]`; `grad` is the output gradient `[B, Q, H, Ch]`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn value_grad_kernel(
    loc: &Tensor<f32>,
    weight: &Tensor<f32>,
    grad: &Tensor<f32>,
    grad_value: &mut Tensor<Atomic<f32>>,
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
) {
    if ABSOLUTE_POS >= units {
        terminate!();
    }
    let c = ABSOLUTE_POS % channels;
    let bqh = ABSOLUTE_POS / channels;
    let head = bqh % heads;
    let b = bqh / qh;
    let row0 = (b * tokens + level_start) * heads + head;
    let g = grad[ABSOLUTE_POS];
    for p in 0..points {
        let sample = (bqh * levels + level) * points + p;
        let ag = weight[sample] * g;
        let (x0, y0, fx, fy) = first_corner(loc[sample * 2], loc[sample * 2 + 1], level_w, level_h);
        let gx = 1.0 - fx;
        let gy = 1.0 - fy;
        let (i00, t00) = corner_token(x0, y0, level_w, level_h);
        let (i10, t10) = corner_token(x0 + 1, y0, level_w, level_h);
        let (i01, t01) = corner_token(x0, y0 + 1, level_w, level_h);
        let (i11, t11) = corner_token(x0 + 1, y0 + 1, level_w, level_h);
        if i00 {
            grad_value[(row0 + t00 * heads) * channels + c].fetch_add(ag * gx * gy);
        }
        if i10 {
            grad_value[(row0 + t10 * heads) * channels + c].fetch_add(ag * fx * gy);
        }
        if i01 {
            grad_value[(row0 + t01 * heads) * channels + c].fetch_add(ag * gx * fy);
        }
        if i11 {
            grad_value[(row0 + t11 * heads) * channels + c].fetch_add(ag * fx * fy);
        }
    }
}

/// `bits[i] += v` on an f32 stored as its bits, by compare-exchange (devices without f32
/// atomic add). The loop ends when the exchange saw the value it read, i.e. when it stored the
/// sum. (WGSL's weak exchange is translated to Vulkan's strong one, which never fails
/// spuriously.)
#[cube]
fn add_bits(bits: &mut Tensor<Atomic<u32>>, i: usize, v: f32) {
    let mut seen = bits[i].load();
    loop {
        let sum = u32::reinterpret(f32::reinterpret(seen) + v);
        let before = bits[i].compare_exchange_weak(seen, sum);
        if before == seen {
            break;
        }
        seen = before;
    }
}

/// [`value_grad_kernel`] for devices without f32 atomic add: `grad_value` is the same f32
/// buffer, seen as bits.
#[cube(launch_unchecked, address_type = "dynamic")]
fn value_grad_bits_kernel(
    loc: &Tensor<f32>,
    weight: &Tensor<f32>,
    grad: &Tensor<f32>,
    grad_value: &mut Tensor<Atomic<u32>>,
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
) {
    if ABSOLUTE_POS >= units {
        terminate!();
    }
    let c = ABSOLUTE_POS % channels;
    let bqh = ABSOLUTE_POS / channels;
    let head = bqh % heads;
    let b = bqh / qh;
    let row0 = (b * tokens + level_start) * heads + head;
    let g = grad[ABSOLUTE_POS];
    for p in 0..points {
        let sample = (bqh * levels + level) * points + p;
        let ag = weight[sample] * g;
        let (x0, y0, fx, fy) = first_corner(loc[sample * 2], loc[sample * 2 + 1], level_w, level_h);
        let gx = 1.0 - fx;
        let gy = 1.0 - fy;
        let (i00, t00) = corner_token(x0, y0, level_w, level_h);
        let (i10, t10) = corner_token(x0 + 1, y0, level_w, level_h);
        let (i01, t01) = corner_token(x0, y0 + 1, level_w, level_h);
        let (i11, t11) = corner_token(x0 + 1, y0 + 1, level_w, level_h);
        if i00 {
            add_bits(
                grad_value,
                (row0 + t00 * heads) * channels + c,
                ag * gx * gy,
            );
        }
        if i10 {
            add_bits(
                grad_value,
                (row0 + t10 * heads) * channels + c,
                ag * fx * gy,
            );
        }
        if i01 {
            add_bits(
                grad_value,
                (row0 + t01 * heads) * channels + c,
                ag * gx * fy,
            );
        }
        if i11 {
            add_bits(
                grad_value,
                (row0 + t11 * heads) * channels + c,
                ag * fx * fy,
            );
        }
    }
}

/// Location and weight gradients for one level: one unit per sample `(b, q, h, p)` of the
/// level; writes `grad_loc` `[B, Q, H, L, P, 2]` and `grad_weight` `[B, Q, H, L, P]`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn sample_grad_kernel(
    value: &Tensor<f32>,
    loc: &Tensor<f32>,
    weight: &Tensor<f32>,
    grad: &Tensor<f32>,
    grad_loc: &mut Tensor<f32>,
    grad_weight: &mut Tensor<f32>,
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
) {
    if ABSOLUTE_POS >= units {
        terminate!();
    }
    let p = ABSOLUTE_POS % points;
    let bqh = ABSOLUTE_POS / points;
    let head = bqh % heads;
    let b = bqh / qh;
    let row0 = (b * tokens + level_start) * heads + head;
    let sample = (bqh * levels + level) * points + p;
    let a = weight[sample];
    let (x0, y0, fx, fy) = first_corner(loc[sample * 2], loc[sample * 2 + 1], level_w, level_h);
    let (i00, t00) = corner_token(x0, y0, level_w, level_h);
    let (i10, t10) = corner_token(x0 + 1, y0, level_w, level_h);
    let (i01, t01) = corner_token(x0, y0 + 1, level_w, level_h);
    let (i11, t11) = corner_token(x0 + 1, y0 + 1, level_w, level_h);
    let r00 = (row0 + t00 * heads) * channels;
    let r10 = (row0 + t10 * heads) * channels;
    let r01 = (row0 + t01 * heads) * channels;
    let r11 = (row0 + t11 * heads) * channels;
    let rg = bqh * channels;
    // <g, v_corner> per corner (0 for a corner outside the map)
    let mut d00 = 0.0f32;
    let mut d10 = 0.0f32;
    let mut d01 = 0.0f32;
    let mut d11 = 0.0f32;
    for c in 0..channels {
        let g = grad[rg + c];
        d00 += g * select(i00, value[r00 + c], 0.0);
        d10 += g * select(i10, value[r10 + c], 0.0);
        d01 += g * select(i01, value[r01 + c], 0.0);
        d11 += g * select(i11, value[r11 + c], 0.0);
    }
    let gx = 1.0 - fx;
    let gy = 1.0 - fy;
    grad_weight[sample] = gx * gy * d00 + fx * gy * d10 + gx * fy * d01 + fx * fy * d11;
    // d bilinear / d x per corner: −(1−fy), 1−fy, −fy, fy; in y: −(1−fx), −fx, 1−fx, fx.
    let dx = gy * (d10 - d00) + fy * (d11 - d01);
    let dy = gx * (d01 - d00) + fx * (d11 - d10);
    grad_loc[sample * 2] = a * dx * f32::cast_from(level_w);
    grad_loc[sample * 2 + 1] = a * dy * f32::cast_from(level_h);
}

fn levels(d: &MsdaDims) -> impl Iterator<Item = Level> + '_ {
    d.shapes
        .iter()
        .zip(&d.starts)
        .enumerate()
        .map(|(index, (&[h, w], &start))| Level { index, h, w, start })
}

fn launch_shape(t: &CubeTensor, units: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&t.client, units);
    (calculate_cube_count_elemwise(&t.client, units, dim), dim)
}

fn address(ts: &[&CubeTensor]) -> AddressType {
    ts.iter()
        .map(|t| t.required_address_type())
        .max()
        .unwrap_or_default()
}

/// Whether the kernels run on `t`'s device: f32 data (the model's MSDA inputs always are).
fn supported(t: &CubeTensor) -> bool {
    t.dtype == DType::F32
}

fn adds_f32_atomically(t: &CubeTensor) -> bool {
    t.client
        .properties()
        .atomic_type_usage(Type::atomic(Type::new(ElemType::Float(FloatKind::F32))))
        .contains(AtomicUsage::Add)
}

/// Forward on primitives: `value` `[B, S, H, Ch]`, `loc` `[B, Q, H, L, P, 2]`, `weight`
/// `[B, Q, H, L, P]` → `[B, Q, H·Ch]`.
fn forward_raw(d: &MsdaDims, value: CubeTensor, loc: CubeTensor, weight: CubeTensor) -> CubeTensor {
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
        // SAFETY: every index is in bounds by construction: units cover `out` exactly, sample
        // indices stay within `[B·Q·H·L·P]`, and corner rows outside the map read token 0.
        unsafe {
            forward_kernel::launch_unchecked(
                &value.client,
                count.clone(),
                dim,
                addr,
                value.clone().into_tensor_arg(),
                loc.clone().into_tensor_arg(),
                weight.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                units,
                d.q * d.h,
                d.h,
                d.ch,
                d.s,
                d.l,
                d.p,
                lv.index,
                lv.h,
                lv.w,
                lv.start,
            );
        }
    }
    out
}

/// Gradients on primitives given the output gradient `grad` `[B, Q, H·Ch]`: (value,
/// locations, weights), shaped like the inputs. `native`: add the value gradient with the
/// device's f32 atomic add (else by compare-exchange on its bits).
fn backward_raw(
    d: &MsdaDims,
    value: CubeTensor,
    loc: CubeTensor,
    weight: CubeTensor,
    grad: CubeTensor,
    native: bool,
) -> (CubeTensor, CubeTensor, CubeTensor) {
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
        // SAFETY: as in `forward_raw`; the value gradient has the value's shape and the
        // sample gradients the locations' and weights' (every sample of every level is
        // written once, so the uninitialised buffers end fully written).
        unsafe {
            if native {
                value_grad_kernel::launch_unchecked(
                    &client,
                    vcount.clone(),
                    vdim,
                    addr,
                    loc.clone().into_tensor_arg(),
                    weight.clone().into_tensor_arg(),
                    grad.clone().into_tensor_arg(),
                    grad_value.clone().into_tensor_arg(),
                    value_units,
                    d.q * d.h,
                    d.h,
                    d.ch,
                    d.s,
                    d.l,
                    d.p,
                    lv.index,
                    lv.h,
                    lv.w,
                    lv.start,
                );
            } else {
                value_grad_bits_kernel::launch_unchecked(
                    &client,
                    vcount.clone(),
                    vdim,
                    addr,
                    loc.clone().into_tensor_arg(),
                    weight.clone().into_tensor_arg(),
                    grad.clone().into_tensor_arg(),
                    grad_value.clone().into_tensor_arg(),
                    value_units,
                    d.q * d.h,
                    d.h,
                    d.ch,
                    d.s,
                    d.l,
                    d.p,
                    lv.index,
                    lv.h,
                    lv.w,
                    lv.start,
                );
            }
            sample_grad_kernel::launch_unchecked(
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
                sample_units,
                d.q * d.h,
                d.h,
                d.ch,
                d.s,
                d.l,
                d.p,
                lv.index,
                lv.h,
                lv.w,
                lv.start,
            );
        }
    }
    (grad_value, grad_loc, grad_weight)
}

fn cube<const D: usize>(t: BurnTensor<D>) -> Option<CubeTensor> {
    t.try_into_primitive::<Cube>().ok().filter(supported)
}

/// The forward on dispatch tensors of the Cube backend (`None` elsewhere or for non-f32 data).
pub(crate) fn forward(
    d: &MsdaDims,
    value: BurnTensor<4>,
    locations: BurnTensor<6>,
    weights: BurnTensor<5>,
) -> Option<BurnTensor<3>> {
    let (v, l, a) = (cube(value)?, cube(locations)?, cube(weights)?);
    Some(BurnTensor::from_primitive::<Cube>(forward_raw(d, v, l, a)))
}

/// The backward on dispatch tensors of the Cube backend: gradients w.r.t. (value,
/// locations, weights) given `grad` `[B, Q, H·Ch]`.
pub(crate) fn backward(
    d: &MsdaDims,
    value: BurnTensor<4>,
    locations: BurnTensor<6>,
    weights: BurnTensor<5>,
    grad: BurnTensor<3>,
) -> Option<(BurnTensor<4>, BurnTensor<6>, BurnTensor<5>)> {
    let (v, l, a, g) = (cube(value)?, cube(locations)?, cube(weights)?, cube(grad)?);
    let native = adds_f32_atomically(&v);
    let (gv, gl, ga) = backward_raw(d, v, l, a, g, native);
    Some((
        BurnTensor::from_primitive::<Cube>(gv),
        BurnTensor::from_primitive::<Cube>(gl),
        BurnTensor::from_primitive::<Cube>(ga),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// Both ways of adding the value gradient (the device's f32 atomic add, and the
    /// compare-exchange loop for devices without one) on the software GPU: equal up to the
    /// order of the additions. Every point samples the one pixel of a 1×1 level (heads and
    /// channels 1), so neighbouring units add into the same element at once: 256·2 adds each.
    #[test]
    fn compare_exchange_adds_equal_native_atomic_adds() {
        let Some(gpu) = crate::device::software_gpu().unwrap() else {
            return;
        };
        let (b, q, h, ch, p) = (2, 256, 1, 1, 2);
        let shapes = [[1usize, 1usize]];
        let mut rng = codetr_data::rng::Rng::new(9);
        let mut draw = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..n).map(|_| rng.uniform(lo, hi)).collect()
        };
        let value = BurnTensor::<4>::from_data(
            TensorData::new(draw(b * h * ch, -1.0, 1.0), [b, 1, h, ch]),
            &gpu,
        );
        let loc = BurnTensor::<6>::from_data(
            TensorData::new(draw(b * q * h * p * 2, 0.1, 0.9), [b, q, h, 1, p, 2]),
            &gpu,
        );
        let weight = BurnTensor::<5>::from_data(
            TensorData::new(draw(b * q * h * p, 0.0, 1.0), [b, q, h, 1, p]),
            &gpu,
        );
        let grad = BurnTensor::<3>::from_data(
            TensorData::new(draw(b * q * h * ch, -1.0, 1.0), [b, q, h * ch]),
            &gpu,
        );
        let d = MsdaDims::of(&value, &shapes, &loc);
        let run = |native| {
            let (gv, _, _) = backward_raw(
                &d,
                cube(value.clone()).unwrap(),
                cube(loc.clone()).unwrap(),
                cube(weight.clone()).unwrap(),
                cube(grad.clone()).unwrap(),
                native,
            );
            BurnTensor::<4>::from_primitive::<Cube>(gv)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let (bits, native) = (run(false), run(true));
        let scale = native.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = bits
            .iter()
            .zip(&native)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(scale > 1.0, "the gradient is not trivial ({scale})");
        assert!(diff <= 1e-5 * scale, "bits vs native: {diff} of {scale}");
    }
}
