//! MSDA as a host kernel with a hand-written backward (Burn custom autodiff op on the Flex
//! device). Plain loops beat the tensor formulations on CPU by a wide margin (see
//! bench/results/model_cpu.jsonl): they touch each sampled value once instead of
//! materialising `[B·Q·H·L·P·4, Ch]` intermediates.
//!
//! Semantics are exactly [`super::msda::msda_naive`]'s (bilinear, zero padding,
//! `align_corners = false`). Gradients: value (scatter-add), locations (derivative of the
//! bilinear weights × level size) and attention weights (dot with the sampled value).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

type Ad = Autodiff<Flex>;

type Dims = super::msda_dims::MsdaDims;

fn host(t: &FlexTensor) -> Vec<f32> {
    match t.as_slice::<f32>() {
        Some(s) => s.to_vec(),
        None => t
            .to_contiguous()
            .as_slice::<f32>()
            .map(<[f32]>::to_vec)
            .unwrap_or_default(),
    }
}

fn flex(v: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape.to_vec()))
}

/// The four bilinear corners of a sampling point: (token index within the level or None when
/// outside, weight, d weight / d fx, d weight / d fy).
#[inline]
fn corners(x: f32, y: f32, hl: usize, wl: usize) -> [(Option<usize>, f32, f32, f32); 4] {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (xi, yi) = (x0 as i64, y0 as i64);
    let at = |dx: i64, dy: i64| {
        let (cx, cy) = (xi + dx, yi + dy);
        (cx >= 0 && cy >= 0 && cx < wl as i64 && cy < hl as i64)
            .then(|| cy as usize * wl + cx as usize)
    };
    [
        (at(0, 0), (1.0 - fx) * (1.0 - fy), -(1.0 - fy), -(1.0 - fx)),
        (at(1, 0), fx * (1.0 - fy), 1.0 - fy, -fx),
        (at(0, 1), (1.0 - fx) * fy, -fy, 1.0 - fx),
        (at(1, 1), fx * fy, fy, fx),
    ]
}

/// Output `[B, Q, H·Ch]`; rows `(b, q)` are independent, so they are spread over the rayon
/// pool (the other core idled while this ran single-threaded).
fn forward(d: &Dims, v: &[f32], loc: &[f32], att: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; d.b * d.q * d.h * d.ch];
    out.par_chunks_mut(d.h * d.ch)
        .enumerate()
        .for_each(|(bq, row)| {
            let bi = bq / d.q;
            for hi in 0..d.h {
                let acc = &mut row[hi * d.ch..(hi + 1) * d.ch];
                for li in 0..d.l {
                    let [hl, wl] = d.shapes[li];
                    for pi in 0..d.p {
                        let k = ((bq * d.h + hi) * d.l + li) * d.p + pi;
                        let a = att[k];
                        let x = loc[2 * k] * wl as f32 - 0.5;
                        let y = loc[2 * k + 1] * hl as f32 - 0.5;
                        for (tok, w, _, _) in corners(x, y, hl, wl) {
                            if let Some(t) = tok {
                                let base = ((bi * d.s + d.starts[li] + t) * d.h + hi) * d.ch;
                                let aw = a * w;
                                for (o, val) in acc.iter_mut().zip(&v[base..base + d.ch]) {
                                    *o += aw * val;
                                }
                            }
                        }
                    }
                }
            }
        });
    out
}

/// Gradients w.r.t. (value, locations, weights) given dL/d(output). Every gradient of batch
/// element `b` lives in its own slice (the value scatter-add never crosses images), so the
/// images are spread over the rayon pool without atomics.
fn backward(
    d: &Dims,
    v: &[f32],
    loc: &[f32],
    att: &[f32],
    g: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let per_k = d.q * d.h * d.l * d.p;
    let mut gv = vec![0f32; v.len()];
    let mut gl = vec![0f32; loc.len()];
    let mut ga = vec![0f32; att.len()];
    gv.par_chunks_mut(d.s * d.h * d.ch)
        .zip(gl.par_chunks_mut(2 * per_k))
        .zip(ga.par_chunks_mut(per_k))
        .enumerate()
        .for_each(|(bi, ((gv, gl), ga))| {
            for qi in 0..d.q {
                for hi in 0..d.h {
                    let o = ((bi * d.q + qi) * d.h + hi) * d.ch;
                    let gout = &g[o..o + d.ch];
                    for li in 0..d.l {
                        let [hl, wl] = d.shapes[li];
                        for pi in 0..d.p {
                            let kl = ((qi * d.h + hi) * d.l + li) * d.p + pi; // in image bi
                            let k = bi * per_k + kl;
                            let a = att[k];
                            let x = loc[2 * k] * wl as f32 - 0.5;
                            let y = loc[2 * k + 1] * hl as f32 - 0.5;
                            let (mut g_att, mut g_fx, mut g_fy) = (0f32, 0f32, 0f32);
                            for (tok, w, dwx, dwy) in corners(x, y, hl, wl) {
                                let Some(t) = tok else { continue };
                                let local = ((d.starts[li] + t) * d.h + hi) * d.ch;
                                let base = bi * d.s * d.h * d.ch + local;
                                // <g, v_corner>
                                let dot: f32 = gout
                                    .iter()
                                    .zip(&v[base..base + d.ch])
                                    .map(|(a, b)| a * b)
                                    .sum();
                                g_att += w * dot;
                                g_fx += dwx * dot;
                                g_fy += dwy * dot;
                                let aw = a * w;
                                for (gvv, gg) in gv[local..local + d.ch].iter_mut().zip(gout) {
                                    *gvv += aw * gg;
                                }
                            }
                            ga[kl] += g_att;
                            gl[2 * kl] += a * g_fx * wl as f32;
                            gl[2 * kl + 1] += a * g_fy * hl as f32;
                        }
                    }
                }
            }
        });
    (gv, gl, ga)
}

#[derive(Debug)]
struct MsdaBackward;

impl Backward<Flex, 3> for MsdaBackward {
    type State = (FlexTensor, FlexTensor, FlexTensor, Dims);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [nv, nl, na] = ops.parents;
        let g = host(&grads.consume::<Flex>(&ops.node));
        let (v, l, a, d) = ops.state;
        let (v, l, a) = (host(&v), host(&l), host(&a));
        let (gv, gl, ga) = backward(&d, &v, &l, &a, &g);
        if let Some(n) = nv {
            grads.register::<Flex>(n.id, flex(gv, &[d.b, d.s, d.h, d.ch]));
        }
        if let Some(n) = nl {
            grads.register::<Flex>(n.id, flex(gl, &[d.b, d.q, d.h, d.l, d.p, 2]));
        }
        if let Some(n) = na {
            grads.register::<Flex>(n.id, flex(ga, &[d.b, d.q, d.h, d.l, d.p]));
        }
    }
}

/// True when the host kernel can run on tensors of `device` (Flex, with or without autodiff).
pub fn supported(device: &Device) -> bool {
    crate::device::is_flex(device)
}

/// Same contract as [`super::msda::msda_core`]; the caller checks [`supported`] first.
pub fn msda_host(
    value: Tensor<4>,
    shapes: &[[usize; 2]],
    locations: Tensor<6>,
    weights: Tensor<5>,
) -> Tensor<3> {
    let d = Dims::of(&value, shapes, &locations);
    let out_shape = [d.b, d.q, d.h * d.ch];
    if value.is_autodiff() || locations.is_autodiff() || weights.is_autodiff() {
        // `supported()` was checked by the caller: these are Flex autodiff tensors.
        let (vp, vg) = value
            .autodiff()
            .try_into_primitive::<Ad>()
            .expect("flex autodiff tensor")
            .into_parts();
        let (lp, lg) = locations
            .autodiff()
            .try_into_primitive::<Ad>()
            .expect("flex autodiff tensor")
            .into_parts();
        let (ap, ag) = weights
            .autodiff()
            .try_into_primitive::<Ad>()
            .expect("flex autodiff tensor")
            .into_parts();
        let y = flex(forward(&d, &host(&vp), &host(&lp), &host(&ap)), &out_shape);
        let out = match MsdaBackward
            .prepare::<NoCheckpointing>([vg, lg, ag])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((vp, lp, ap, d), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive::<Ad>(out)
    } else {
        let v = host(&value.try_into_primitive::<Flex>().expect("flex tensor"));
        let lo = host(&locations.try_into_primitive::<Flex>().expect("flex tensor"));
        let a = host(&weights.try_into_primitive::<Flex>().expect("flex tensor"));
        Tensor::from_primitive::<Flex>(flex(forward(&d, &v, &lo, &a), &out_shape))
    }
}
