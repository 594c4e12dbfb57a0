//! MSDA on any device with memory bounded by a budget: Burn tensor ops over chunks of
//! (level, points), and a hand-written backward that recomputes each chunk's samples instead of
//! keeping them.
//!
//! Why: the `Gather` formulation materialises all `[B·Q·H·L·P·4, Ch]` samples at once and
//! autodiff keeps them for the backward (several GB per image at 800²); `Host` is fast but runs
//! on host memory only. Here the largest intermediate is one chunk's samples, `[B·Q·H, k·4, Ch]`
//! with `k ≤ P` points of one level chosen so that it stays under the budget; nothing of size
//! `L·P × value` is ever alive. The cost is `L·⌈P/k⌉` rounds of a few ops forward, and twice
//! that backward (gather again, then scatter-add).
//!
//! Semantics are exactly [`super::msda::msda_naive`]'s (bilinear, zero padding,
//! `align_corners = false`); gradients are those of [`super::msda_host`] (the integer corner is
//! a constant, the bilinear weights carry the location gradient).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Backend, DispatchKindConversion, DispatchTensor, Flex};
use burn::tensor::{Int, Tensor};

use super::msda_dims::MsdaDims;
use super::rows::{gather_rows, scatter_add_rows};

/// Default budget: elements of one chunk's sampled values (2^26 f32 = 256 MiB).
pub const DEFAULT_BUDGET: usize = 1 << 26;

/// One round: points `p0 .. p0 + k` of level `level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub level: usize,
    pub p0: usize,
    pub k: usize,
}

/// Dimensions of one call and its chunks.
#[derive(Debug, Clone)]
struct Plan {
    d: MsdaDims,
    chunks: Vec<Chunk>,
}

/// The chunks for `l` levels of `p` points when one point's samples of all queries and heads
/// take `per_point` elements (`B·Q·H·4·Ch`): as many points of one level per round as fit in
/// `budget`, at least one.
pub fn chunks(l: usize, p: usize, per_point: usize, budget: usize) -> Vec<Chunk> {
    let k = (budget / per_point.max(1)).clamp(1, p.max(1));
    (0..l)
        .flat_map(|level| {
            (0..p).step_by(k).map(move |p0| Chunk {
                level,
                p0,
                k: k.min(p - p0),
            })
        })
        .collect()
}

/// A chunk's bilinear corners: the value row of each corner and its weights.
struct Corners {
    /// `[B·Q·H·k·4]` rows of `[B·H·S, Ch]` (0 where the corner is outside; its weights are 0).
    index: Tensor<1, Int>,
    /// `[B, Q, H, k, 4]` bilinear weights (0 outside the map).
    bilinear: Tensor<5>,
    /// `[B, Q, H, k, 4]` d bilinear / d x and d / d y in pixels (0 outside the map).
    d_x: Tensor<5>,
    d_y: Tensor<5>,
}

fn corners(plan: &Plan, c: Chunk, locations: &Tensor<6>) -> Corners {
    let device = locations.device();
    let (b, q, h, k) = (plan.d.b, plan.d.q, plan.d.h, c.k);
    let [hl, wl] = plan.d.shapes[c.level];
    let dims = [b, q, h, k];
    let loc = locations
        .clone()
        .narrow(3, c.level, 1)
        .narrow(4, c.p0, k)
        .reshape([b, q, h, k, 2]);
    let x = loc.clone().narrow(4, 0, 1).reshape(dims) * wl as f64 - 0.5;
    let y = loc.narrow(4, 1, 1).reshape(dims) * hl as f64 - 0.5;
    let x0 = x.clone().floor();
    let y0 = y.clone().floor();
    let fx = x - x0.clone();
    let fy = y - y0.clone();
    let (x0, y0) = (x0.int(), y0.int());
    // Row of (batch, head, first token of the level) in `[B·H·S, Ch]`.
    let base = (Tensor::<1, Int>::arange(0..b as i64, &device).reshape([b, 1, 1, 1]) * h as i64
        + Tensor::<1, Int>::arange(0..h as i64, &device).reshape([1, 1, h, 1]))
        * plan.d.s as i64
        + plan.d.starts[c.level] as i64;
    let base = base.expand(dims);
    let (ones_x, ones_y) = (fx.ones_like(), fy.ones_like());
    let mut index = Vec::with_capacity(4);
    let mut bilinear = Vec::with_capacity(4);
    let mut d_x = Vec::with_capacity(4);
    let mut d_y = Vec::with_capacity(4);
    for (dx, dy) in [(0i64, 0i64), (1, 0), (0, 1), (1, 1)] {
        let xi = x0.clone() + dx;
        let yi = y0.clone() + dy;
        let valid = xi
            .clone()
            .greater_equal_elem(0)
            .bool_and(xi.clone().lower_elem(wl as i64))
            .bool_and(yi.clone().greater_equal_elem(0))
            .bool_and(yi.clone().lower_elem(hl as i64));
        let row = (yi * wl as i64 + xi + base.clone()).mask_fill(valid.clone().bool_not(), 0);
        let valid = valid.float();
        // wx = 1 − fx or fx, dwx/dfx = −1 or +1; likewise in y.
        let (wx, sx) = if dx == 0 {
            (ones_x.clone() - fx.clone(), -1.0)
        } else {
            (fx.clone(), 1.0)
        };
        let (wy, sy) = if dy == 0 {
            (ones_y.clone() - fy.clone(), -1.0)
        } else {
            (fy.clone(), 1.0)
        };
        index.push(row);
        bilinear.push(wx.clone() * wy.clone() * valid.clone());
        d_x.push(wy * valid.clone() * sx);
        d_y.push(wx * valid * sy);
    }
    let n = b * q * h * k * 4;
    Corners {
        index: Tensor::stack::<5>(index, 4).reshape([n]),
        bilinear: Tensor::stack(bilinear, 4),
        d_x: Tensor::stack(d_x, 4),
        d_y: Tensor::stack(d_y, 4),
    }
}

/// `[B, S, H, Ch]` → `[B·H·S, Ch]`: rows of (batch, head, token).
fn rows(plan: &Plan, value: Tensor<4>) -> Tensor<2> {
    value
        .permute([0, 2, 1, 3])
        .reshape([plan.d.b * plan.d.h * plan.d.s, plan.d.ch])
}

/// A chunk's attention weights, `[B, Q, H, k]`.
fn attention(plan: &Plan, c: Chunk, weights: &Tensor<5>) -> Tensor<4> {
    weights
        .clone()
        .narrow(3, c.level, 1)
        .narrow(4, c.p0, c.k)
        .reshape([plan.d.b, plan.d.q, plan.d.h, c.k])
}

fn forward(plan: &Plan, value: Tensor<4>, locations: Tensor<6>, weights: Tensor<5>) -> Tensor<3> {
    let bqh = plan.d.b * plan.d.q * plan.d.h;
    let rows = rows(plan, value);
    let mut out: Option<Tensor<3>> = None;
    for &c in &plan.chunks {
        let k4 = c.k * 4;
        let cs = corners(plan, c, &locations);
        let coef = cs.bilinear * attention(plan, c, &weights).unsqueeze_dim::<5>(4);
        let sampled = gather_rows(rows.clone(), cs.index).reshape([bqh, k4, plan.d.ch]);
        let part = coef.reshape([bqh, 1, k4]).matmul(sampled); // [B·Q·H, 1, Ch]
        out = Some(match out {
            Some(acc) => acc + part,
            None => part,
        });
    }
    let out = out.unwrap_or_else(|| Tensor::zeros([bqh, 1, plan.d.ch], &locations.device()));
    out.reshape([plan.d.b, plan.d.q, plan.d.h * plan.d.ch])
}

/// Gradients w.r.t. (value, locations, weights) given `grad`, `[B, Q, H·Ch]`.
fn backward(
    plan: &Plan,
    value: Tensor<4>,
    locations: Tensor<6>,
    weights: Tensor<5>,
    grad: Tensor<3>,
) -> (Tensor<4>, Tensor<6>, Tensor<5>) {
    let (b, q, h, ch) = (plan.d.b, plan.d.q, plan.d.h, plan.d.ch);
    let bqh = b * q * h;
    let rows = rows(plan, value);
    let mut grad_rows = rows.zeros_like();
    let g = grad.reshape([bqh, ch, 1]);
    let g_row = g.clone().reshape([bqh, 1, ch]);
    let mut grad_loc: Vec<Vec<Tensor<5>>> = vec![Vec::new(); plan.d.l];
    let mut grad_att: Vec<Vec<Tensor<4>>> = vec![Vec::new(); plan.d.l];
    for &c in &plan.chunks {
        let (k, k4) = (c.k, c.k * 4);
        let [hl, wl] = plan.d.shapes[c.level];
        let cs = corners(plan, c, &locations);
        let att = attention(plan, c, &weights);
        let sampled = gather_rows(rows.clone(), cs.index.clone()).reshape([bqh, k4, ch]);
        // <g, v_corner> per corner: [B, Q, H, k, 4]
        let dot = sampled.matmul(g.clone()).reshape([b, q, h, k, 4]);
        grad_att[c.level].push(
            (cs.bilinear.clone() * dot.clone())
                .sum_dim(4)
                .reshape([b, q, h, k]),
        );
        let gx = (cs.d_x * dot.clone()).sum_dim(4).reshape([b, q, h, k]) * att.clone() * wl as f64;
        let gy = (cs.d_y * dot).sum_dim(4).reshape([b, q, h, k]) * att.clone() * hl as f64;
        grad_loc[c.level].push(Tensor::stack(vec![gx, gy], 4));
        // Scatter-add a·w·g into the corners' rows (outside corners add 0 to row 0).
        let coef = (cs.bilinear * att.unsqueeze_dim::<5>(4)).reshape([bqh, k4, 1]);
        let contrib = (coef * g_row.clone()).reshape([bqh * k4, ch]);
        grad_rows = scatter_add_rows(grad_rows, cs.index, contrib);
    }
    let grad_value = grad_rows
        .reshape([b, h, plan.d.s, ch])
        .permute([0, 2, 1, 3]);
    // Per level: points along dim 3, then levels along a new dim 3.
    let grad_loc = Tensor::stack::<6>(grad_loc.into_iter().map(|v| Tensor::cat(v, 3)).collect(), 3);
    let grad_att = Tensor::stack::<5>(grad_att.into_iter().map(|v| Tensor::cat(v, 3)).collect(), 3);
    (grad_value, grad_loc, grad_att)
}

/// A forward and its recomputing backward on dispatch tensors: the chunked tensor ops above,
/// or on CubeCL devices [`super::msda_cube`]'s kernels. The tracked op keeps only the three
/// inputs and calls `backward` on them.
#[derive(Debug, Clone, Copy)]
struct Kernels {
    forward: fn(&Plan, Tensor<4>, Tensor<6>, Tensor<5>) -> Tensor<3>,
    #[allow(clippy::type_complexity)]
    backward:
        fn(&Plan, Tensor<4>, Tensor<6>, Tensor<5>, Tensor<3>) -> (Tensor<4>, Tensor<6>, Tensor<5>),
}

const CHUNKED: Kernels = Kernels { forward, backward };

#[derive(Debug)]
struct RecomputingBackward;

impl<B: Backend> Backward<B, 3> for RecomputingBackward
where
    DispatchTensor: DispatchKindConversion<B>,
{
    type State = (
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        Plan,
        Kernels,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _c: &mut Checkpointer) {
        let [nv, nl, na] = ops.parents;
        let g = Tensor::<3>::from_primitive::<B>(grads.consume::<B>(&ops.node));
        let (v, l, a, plan, kernels) = ops.state;
        let (gv, gl, ga) = (kernels.backward)(
            &plan,
            Tensor::from_primitive::<B>(v),
            Tensor::from_primitive::<B>(l),
            Tensor::from_primitive::<B>(a),
            g,
        );
        // These tensors were made from B primitives on B's device just above.
        if let (Some(n), Ok(t)) = (nv, gv.try_into_primitive::<B>()) {
            grads.register::<B>(n.id, t);
        }
        if let (Some(n), Ok(t)) = (nl, gl.try_into_primitive::<B>()) {
            grads.register::<B>(n.id, t);
        }
        if let (Some(n), Ok(t)) = (na, ga.try_into_primitive::<B>()) {
            grads.register::<B>(n.id, t);
        }
    }
}

/// The tracked op on backend `B`, or `None` when the inputs do not live on `Autodiff<B>`.
/// (Tensor clones share their buffers: trying a backend copies nothing.)
fn tracked<B: Backend>(
    plan: &Plan,
    kernels: Kernels,
    value: &Tensor<4>,
    locations: &Tensor<6>,
    weights: &Tensor<5>,
) -> Option<Tensor<3>>
where
    DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B>>,
{
    let v = value.clone().autodiff().try_into_primitive::<Autodiff<B>>();
    let l = locations
        .clone()
        .autodiff()
        .try_into_primitive::<Autodiff<B>>();
    let a = weights
        .clone()
        .autodiff()
        .try_into_primitive::<Autodiff<B>>();
    let (Ok(v), Ok(l), Ok(a)) = (v, l, a) else {
        return None;
    };
    let ((vp, vg), (lp, lg), (ap, ag)) = (v.into_parts(), l.into_parts(), a.into_parts());
    let y = (kernels.forward)(
        plan,
        Tensor::from_primitive::<B>(vp.clone()),
        Tensor::from_primitive::<B>(lp.clone()),
        Tensor::from_primitive::<B>(ap.clone()),
    )
    .try_into_primitive::<B>()
    .ok()?;
    let out = match RecomputingBackward
        .prepare::<NoCheckpointing>([vg, lg, ag])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((vp, lp, ap, plan.clone(), kernels), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Autodiff<B>>(out))
}

/// The CubeCL kernels, with the chunked ops as the fallback for what they do not take
/// (non-f32 data).
#[cfg(any(feature = "cuda", feature = "vulkan", feature = "wgpu"))]
const CUBE: Kernels = Kernels {
    forward: |plan, v, l, a| {
        super::msda_cube::forward(&plan.d, v.clone(), l.clone(), a.clone())
            .unwrap_or_else(|| forward(plan, v, l, a))
    },
    backward: |plan, v, l, a, g| {
        super::msda_cube::backward(&plan.d, v.clone(), l.clone(), a.clone(), g.clone())
            .unwrap_or_else(|| backward(plan, v, l, a, g))
    },
};

fn plan(value: &Tensor<4>, shapes: &[[usize; 2]], locations: &Tensor<6>, budget: usize) -> Plan {
    let d = MsdaDims::of(value, shapes, locations);
    let chunks = chunks(d.l, d.p, d.b * d.q * d.h * 4 * d.ch, budget);
    Plan { d, chunks }
}

/// Same contract as [`super::msda::msda_core`], with the chunks sized by `budget` (elements of
/// one chunk's samples; [`DEFAULT_BUDGET`] in the model).
///
/// Under autodiff on a backend without the tracked op (none today: Flex has it, and so do
/// CubeCL's CUDA and wgpu in builds with those features) this falls back to plain autodiff
/// through the same ops, which is correct but keeps every chunk's samples for the backward.
pub fn msda_chunked(
    value: Tensor<4>,
    shapes: &[[usize; 2]],
    locations: Tensor<6>,
    weights: Tensor<5>,
    budget: usize,
) -> Tensor<3> {
    let plan = plan(&value, shapes, &locations, budget);
    if !(value.is_autodiff() || locations.is_autodiff() || weights.is_autodiff()) {
        return forward(&plan, value, locations, weights);
    }
    if let Some(out) = tracked::<Flex>(&plan, CHUNKED, &value, &locations, &weights) {
        return out;
    }
    // CubeCL's runtimes (CUDA, wgpu) are one dispatch backend.
    #[cfg(any(feature = "cuda", feature = "vulkan", feature = "wgpu"))]
    if let Some(out) = tracked::<burn::backend::Cube>(&plan, CHUNKED, &value, &locations, &weights)
    {
        return out;
    }
    forward(&plan, value, locations, weights)
}

/// Same contract as [`super::msda::msda_core`] on a CubeCL device (CUDA, Vulkan, wgpu), with
/// [`super::msda_cube`]'s kernels forward and backward; `None` on any other device, and for
/// non-f32 data outside autodiff (the caller then runs [`msda_chunked`]).
#[cfg(any(feature = "cuda", feature = "vulkan", feature = "wgpu"))]
pub fn msda_cube(
    value: Tensor<4>,
    shapes: &[[usize; 2]],
    locations: Tensor<6>,
    weights: Tensor<5>,
) -> Option<Tensor<3>> {
    let plan = plan(&value, shapes, &locations, DEFAULT_BUDGET);
    if !(value.is_autodiff() || locations.is_autodiff() || weights.is_autodiff()) {
        return super::msda_cube::forward(&plan.d, value, locations, weights);
    }
    tracked::<burn::backend::Cube>(&plan, CUBE, &value, &locations, &weights)
}

#[cfg(test)]
mod tests {
    use super::{Chunk, chunks};

    #[test]
    fn chunks_cover_every_point_once_and_respect_the_budget() {
        // 3 points per round fit: 3 + 2 points per level.
        let c = chunks(2, 5, 10, 35);
        assert_eq!(
            c,
            vec![
                Chunk {
                    level: 0,
                    p0: 0,
                    k: 3
                },
                Chunk {
                    level: 0,
                    p0: 3,
                    k: 2
                },
                Chunk {
                    level: 1,
                    p0: 0,
                    k: 3
                },
                Chunk {
                    level: 1,
                    p0: 3,
                    k: 2
                },
            ]
        );
        // A point larger than the budget still runs, alone; a huge budget takes a level at once.
        assert!(chunks(3, 4, 100, 1).iter().all(|c| c.k == 1));
        assert_eq!(chunks(3, 4, 100, 1).len(), 12);
        assert!(chunks(3, 4, 1, usize::MAX).iter().all(|c| c.k == 4));
    }
}
