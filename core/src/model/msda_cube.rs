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
//!   (the device's f32 atomic add where it has one, as CUDA, Vulkan on NVIDIA and lavapipe
//!   do; otherwise a compare-exchange loop on the bits);
//! - location and weight gradients: one unit per sample `(b, q, h, l, p)`, looping over the
//!   channels for the four corner dot products; no atomics.
//!
//! Each kernel is launched once per level (the level's shape and first token are scalars), so
//! nothing is compiled per image size. Semantics are [`super::msda::msda_naive`]'s (bilinear,
//! zero padding, `align_corners = false`); gradients are [`super::msda_host`]'s.
//!
//! The entry point is [`super::msda_chunked::msda_cube`]: it shares the chunked op's tracked
//! autodiff wrapper (keep the inputs, recompute in the backward), with these kernels plugged
//! in and the chunked ops as the fallback for non-f32 data.

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

// The kernels, shared with the Burn 0.21 bench (bench/burn021_ops) word for word.
include!("msda_cube_kernels.rs");

/// One level's scalars.
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

/// The launch arguments of a kernel over `units` units for level `lv`.
fn args(d: &MsdaDims, lv: Level, units: usize) -> MsdaArgsLaunch {
    MsdaArgsLaunch::new(
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
    )
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
                args(d, lv, units),
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
            let value_grad = match native {
                true => value_grad_kernel::launch_unchecked::<NativeAdd>,
                false => value_grad_kernel::launch_unchecked::<BitsAdd>,
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
                args(d, lv, sample_units),
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
