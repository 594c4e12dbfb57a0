//! The product's MSDA CubeCL kernels on Burn 0.21 / CubeCL 0.10, so that the backend decision
//! compares the same kernels on both backends, not kernels against a tensor program. The
//! kernels are the product's source itself (`include!` of `core/src/model/msda_cube_kernels.rs`);
//! this file is only their host side (buffers, launches), where 0.21 differs from the product's
//! `msda_cube.rs`: the runtime is a type parameter. Parity with the chunked tensor program
//! (`crate::msda`) is this bench's `msda_parity` row.

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

// The product's kernels, word for word (core/src/model/msda_cube_kernels.rs).
include!("../../../core/src/model/msda_cube_kernels.rs");

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
