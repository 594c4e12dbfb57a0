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
//!
//! The kernels reach the dispatch tensors as a Burn backend extension ([`MsdaCubeOps`]):
//! implemented once on the Cube backend's primitives, routed by Burn's dispatch, and, in
//! builds with Burn's fusion, registered as a lazy custom op of the fused stream. So the
//! element-wise chains around MSDA still fuse, and nothing waits on the host at the call.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, backend_extension};
use burn::tensor::{DType, Shape, Tensor as BurnTensor};
use burn_cubecl::CubeBackend;
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
        output_shape(d),
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

/// The kernels as a backend extension. Burn generates the dispatch routing and, with its
/// `fusion` feature, the lazy `Fusion<CubeBackend>` version: the output's shape and dtype are
/// declared here, the kernels run when the fused stream reaches them.
#[backend_extension(Cube, Fusion: cfg(feature = "fusion"))]
pub(crate) trait MsdaCubeOps: Backend {
    /// `value` `[B, S, H, Ch]`, `locations` `[B, Q, H, L, P, 2]`, `weights` `[B, Q, H, L, P]`
    /// (all f32, contiguous or not) → `[B, Q, H·Ch]`.
    #[fusion(dtype = value, shape = output_shape(dims))]
    fn msda_forward(
        value: FloatTensor<Self>,
        locations: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        dims: MsdaDims,
    ) -> FloatTensor<Self>;

    /// Gradients w.r.t. (value, locations, weights), shaped like them, given `grad`
    /// `[B, Q, H·Ch]`.
    #[fusion(meta = |value, locations, weights, _grad, _dims| (value.clone(), locations.clone(), weights.clone()))]
    fn msda_backward(
        value: FloatTensor<Self>,
        locations: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        dims: MsdaDims,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The forward's output shape `[B, Q, H·Ch]`.
fn output_shape(d: &MsdaDims) -> Shape {
    Shape::new([d.b, d.q, d.h * d.ch])
}

impl MsdaCubeOps for CubeBackend {
    fn msda_forward(
        value: CubeTensor,
        locations: CubeTensor,
        weights: CubeTensor,
        dims: MsdaDims,
    ) -> CubeTensor {
        forward_raw(&dims, value, locations, weights)
    }

    fn msda_backward(
        value: CubeTensor,
        locations: CubeTensor,
        weights: CubeTensor,
        grad: CubeTensor,
        dims: MsdaDims,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let native = adds_f32_atomically(&value);
        backward_raw(&dims, value, locations, weights, grad, native)
    }
}

/// Whether the kernels take `t`: a tensor of the Cube backend (not autodiff: the caller
/// unwraps that) holding f32 data.
fn takes<const D: usize>(t: &BurnTensor<D>) -> bool {
    t.dtype() == DType::F32 && t.clone().try_into_primitive::<Cube>().is_ok()
}

/// The forward on dispatch tensors of the Cube backend (`None` elsewhere or for non-f32 data).
pub(crate) fn forward(
    d: &MsdaDims,
    value: BurnTensor<4>,
    locations: BurnTensor<6>,
    weights: BurnTensor<5>,
) -> Option<BurnTensor<3>> {
    if !(takes(&value) && takes(&locations) && takes(&weights)) {
        return None;
    }
    Some(BurnTensor::from_dispatch(Dispatch::msda_forward(
        value.into_dispatch(),
        locations.into_dispatch(),
        weights.into_dispatch(),
        d.clone(),
    )))
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
    if !(takes(&value) && takes(&locations) && takes(&weights) && takes(&grad)) {
        return None;
    }
    let (gv, gl, ga) = Dispatch::msda_backward(
        value.into_dispatch(),
        locations.into_dispatch(),
        weights.into_dispatch(),
        grad.into_dispatch(),
        d.clone(),
    );
    Some((
        BurnTensor::from_dispatch(gv),
        BurnTensor::from_dispatch(gl),
        BurnTensor::from_dispatch(ga),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// The Cube backend's own tensor under a dispatch tensor (with fusion: once the stream
    /// that makes it has run).
    fn primitive<const D: usize>(t: BurnTensor<D>) -> CubeTensor {
        let t = t.try_into_primitive::<Cube>().ok().unwrap();
        #[cfg(feature = "fusion")]
        let t = t.client.clone().resolve_tensor_float::<CubeBackend>(t);
        t
    }

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
                primitive(value.clone()),
                primitive(loc.clone()),
                primitive(weight.clone()),
                primitive(grad.clone()),
                native,
            );
            burn_cubecl::ops::into_data_sync(gv)
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
