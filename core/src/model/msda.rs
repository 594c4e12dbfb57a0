//! Multi-scale deformable attention (Deformable DETR eq. 3): the sampling core.
//!
//! Implementations of the same function, all with grid_sample semantics (bilinear,
//! zero padding, `align_corners = false`: a location `u ∈ [0, 1]` on a level of width `W`
//! samples pixel coordinate `u·W − 0.5`):
//! - [`MsdaImpl::Host`] (the default): the device's own kernel with a hand-written backward:
//!   host loops on CPU (msda_host.rs), CubeCL kernels on CUDA, Vulkan and wgpu
//!   (msda_cube.rs).
//! - [`MsdaImpl::Chunked`] (what `Host` means on any other device): tensor ops over chunks of
//!   points with a hand-written backward, memory bounded by a budget (msda_chunked.rs).
//! - [`MsdaImpl::Gather`]: one `select` over all levels' values at once, with
//!   the four bilinear corners' weights computed as tensors. Its backward is a scatter-add,
//!   which is what makes training on CPU affordable; it is also what `--msda gather` exports.
//! - [`MsdaImpl::GridSample`]: Burn's `grid_sample_2d` per level, like the official PyTorch
//!   fallback `ms_deform_attn_core_pytorch`, and like the default ONNX lowering.
//! - [`msda_naive`]: plain loops over host memory — the reference the others are tested
//!   against, never used in the model.

use crate::model::autocast as ac;
use burn::tensor::ops::{GridSampleOptions, GridSamplePaddingMode, InterpolateMode};
use burn::tensor::{Int, Tensor, TensorData};
use codetr_model::Msda;
use serde::{Deserialize, Serialize};

pub use super::msda_dims::level_starts;

/// Which implementation of the sampling core to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MsdaImpl {
    /// The device's kernel with a hand-written backward: host loops on Flex (the fastest on
    /// CPU: 2–7× `Gather` forward+backward, bench/model.sh msda), CubeCL kernels on GPU
    /// devices, `Chunked` elsewhere.
    #[default]
    Host,
    /// All samples at once (`[B·Q·H·L·P·4, Ch]`), backward by autodiff.
    Gather,
    /// Burn's `grid_sample_2d` per level, backward by autodiff.
    GridSample,
    /// Chunks of points with a recomputing backward: any device, memory bounded.
    Chunked,
}

/// The MSDA sampling core.
///
/// - `value`: `[B, S, H, Ch]`, the projected values of all levels, flattened row-major per
///   level and concatenated (`S = Σ h_l·w_l`).
/// - `shapes`: `[h_l, w_l]` per level.
/// - `locations`: `[B, Q, H, L, P, 2]`, sampling points `(x, y)` normalised to [0, 1] per level
///   (points outside sample zeros).
/// - `weights`: `[B, Q, H, L, P]`, attention weights (softmax over `L·P` done by the caller).
///
/// Returns `[B, Q, H·Ch]`.
pub fn msda_core(
    value: Tensor<4>,
    shapes: &[[usize; 2]],
    locations: Tensor<6>,
    weights: Tensor<5>,
    imp: MsdaImpl,
) -> Tensor<3> {
    match imp {
        MsdaImpl::Host if super::msda_host::supported(&value.device()) => {
            super::msda_host::msda_host(value, shapes, locations, weights)
        }
        // On a GPU device: the CubeCL kernels (`None` only on another device or for non-f32
        // data outside autodiff).
        #[cfg(any(feature = "cuda", feature = "vulkan", feature = "wgpu"))]
        MsdaImpl::Host
            if let Some(out) = super::msda_chunked::msda_cube(
                value.clone(),
                shapes,
                locations.clone(),
                weights.clone(),
            ) =>
        {
            out
        }
        MsdaImpl::Host | MsdaImpl::Chunked => super::msda_chunked::msda_chunked(
            value,
            shapes,
            locations,
            weights,
            super::msda_chunked::DEFAULT_BUDGET,
        ),
        MsdaImpl::Gather => msda_gather(value, shapes, locations, weights),
        MsdaImpl::GridSample => msda_grid_sample(value, shapes, locations, weights),
    }
}

fn per_level_int(
    vals: &[i64],
    dims: [usize; 5],
    l: usize,
    device: &burn::tensor::Device,
) -> Tensor<5, Int> {
    Tensor::<1, Int>::from_ints(TensorData::new(vals.to_vec(), [l]), device)
        .reshape([1, 1, 1, l, 1])
        .expand(dims)
}

fn msda_gather(
    value: Tensor<4>,
    shapes: &[[usize; 2]],
    locations: Tensor<6>,
    weights: Tensor<5>,
) -> Tensor<3> {
    let device = value.device();
    let [b, s, h, ch] = value.dims();
    let [_, q, _, l, p, _] = locations.dims();
    let dims = [b, q, h, l, p];
    // Rows of (batch, head, token): one select serves every level.
    let rows = value.permute([0, 2, 1, 3]).reshape([b * h * s, ch]);

    let widths: Vec<i64> = shapes.iter().map(|s| s[1] as i64).collect();
    let heights: Vec<i64> = shapes.iter().map(|s| s[0] as i64).collect();
    let starts: Vec<i64> = level_starts(shapes).iter().map(|&v| v as i64).collect();
    let w_i = per_level_int(&widths, dims, l, &device);
    let h_i = per_level_int(&heights, dims, l, &device);
    let w_f = w_i.clone().float();
    let h_f = h_i.clone().float();
    let base = (Tensor::<1, Int>::arange(0..b as i64, &device).reshape([b, 1, 1, 1, 1])
        * (h as i64)
        + Tensor::<1, Int>::arange(0..h as i64, &device).reshape([1, 1, h, 1, 1]))
        * (s as i64);
    let offset = base.expand(dims) + per_level_int(&starts, dims, l, &device);

    let x = locations.clone().narrow(5, 0, 1).reshape(dims) * w_f - 0.5;
    let y = locations.narrow(5, 1, 1).reshape(dims) * h_f - 0.5;
    let x0 = x.clone().floor().detach();
    let y0 = y.clone().floor().detach();
    let fx = x - x0.clone();
    let fy = y - y0.clone();
    let (x0, y0) = (x0.int(), y0.int());

    let mut index = Vec::with_capacity(4);
    let mut weight = Vec::with_capacity(4);
    for (dx, dy) in [(0i64, 0i64), (1, 0), (0, 1), (1, 1)] {
        let xi = x0.clone() + dx;
        let yi = y0.clone() + dy;
        let valid = xi
            .clone()
            .greater_equal_elem(0)
            .bool_and(xi.clone().lower(w_i.clone()))
            .bool_and(yi.clone().greater_equal_elem(0))
            .bool_and(yi.clone().lower(h_i.clone()));
        let flat = (yi * w_i.clone() + xi + offset.clone()).mask_fill(valid.clone().bool_not(), 0);
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
        index.push(flat);
        weight.push(wx * wy * valid.float());
    }
    let n = b * q * h * l * p * 4;
    let index: Tensor<6, Int> = Tensor::stack(index, 5);
    let weight: Tensor<6> = Tensor::stack::<6>(weight, 5) * weights.unsqueeze_dim::<6>(5);
    let sampled =
        super::rows::gather_rows(rows, index.reshape([n])).reshape([b * q * h, l * p * 4, ch]);
    (sampled * weight.reshape([b * q * h, l * p * 4, 1]))
        .sum_dim(1)
        .reshape([b, q, h * ch])
}

fn msda_grid_sample(
    value: Tensor<4>,
    shapes: &[[usize; 2]],
    locations: Tensor<6>,
    weights: Tensor<5>,
) -> Tensor<3> {
    let [b, _s, h, ch] = value.dims();
    let [_, q, _, l, p, _] = locations.dims();
    let starts = level_starts(shapes);
    // [B, Q, H, L, P, 2] → [B, H, L, Q, P, 2], grid in [-1, 1].
    let grid = locations.permute([0, 2, 3, 1, 4, 5]) * 2.0 - 1.0;
    let opts = GridSampleOptions::new(InterpolateMode::Bilinear)
        .with_padding_mode(GridSamplePaddingMode::Zeros)
        .with_align_corners(false);
    let mut per_level = Vec::with_capacity(l);
    for (lvl, (&[hl, wl], &start)) in shapes.iter().zip(&starts).enumerate() {
        // [B, hl·wl, H, Ch] → [B·H, Ch, hl, wl]
        let v = value
            .clone()
            .narrow(1, start, hl * wl)
            .permute([0, 2, 3, 1])
            .reshape([b * h, ch, hl, wl]);
        let g = grid.clone().narrow(2, lvl, 1).reshape([b * h, q, p, 2]);
        per_level.push(v.grid_sample_2d(g, opts.clone())); // [B·H, Ch, Q, P]
    }
    let sampled: Tensor<4> = Tensor::cat(per_level, 3); // [B·H, Ch, Q, L·P]
    let w = weights
        .permute([0, 2, 1, 3, 4])
        .reshape([b * h, 1, q, l * p]);
    (sampled * w)
        .sum_dim(3)
        .reshape([b, h * ch, q])
        .swap_dims(1, 2)
}

/// Reference implementation with plain loops (tests and benchmarks only). Same arguments and
/// result as [`msda_core`]; runs on host copies of the tensors.
pub fn msda_naive(
    value: Tensor<4>,
    shapes: &[[usize; 2]],
    locations: Tensor<6>,
    weights: Tensor<5>,
) -> Tensor<3> {
    let device = value.device();
    let [b, s, h, ch] = value.dims();
    let [_, q, _, l, p, _] = locations.dims();
    let v: Vec<f32> = value
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let loc: Vec<f32> = locations
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let att: Vec<f32> = weights
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let starts = level_starts(shapes);
    let mut out = vec![0f32; b * q * h * ch];
    let val = |bi: usize, tok: usize, hi: usize, c: usize| v[((bi * s + tok) * h + hi) * ch + c];
    for bi in 0..b {
        for qi in 0..q {
            for hi in 0..h {
                for li in 0..l {
                    let [hl, wl] = shapes[li];
                    for pi in 0..p {
                        let base = ((((bi * q + qi) * h + hi) * l + li) * p + pi) * 2;
                        let x = loc[base] * wl as f32 - 0.5;
                        let y = loc[base + 1] * hl as f32 - 0.5;
                        let a = att[base / 2];
                        let (x0, y0) = (x.floor(), y.floor());
                        let (fx, fy) = (x - x0, y - y0);
                        for (dx, dy, wgt) in [
                            (0, 0, (1.0 - fx) * (1.0 - fy)),
                            (1, 0, fx * (1.0 - fy)),
                            (0, 1, (1.0 - fx) * fy),
                            (1, 1, fx * fy),
                        ] {
                            let (xi, yi) = (x0 as i64 + dx, y0 as i64 + dy);
                            if xi < 0 || yi < 0 || xi >= wl as i64 || yi >= hl as i64 {
                                continue;
                            }
                            let tok = starts[li] + yi as usize * wl + xi as usize;
                            for c in 0..ch {
                                out[((bi * q + qi) * h + hi) * ch + c] +=
                                    a * wgt * val(bi, tok, hi, c);
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [b, q, h * ch]), &device)
}

/// Where each query looks: a point `(x, y)` or a box `(cx, cy, w, h)`, normalised. Without
/// padding every level sees the same reference; in a padded batch each level's is scaled by
/// that level's valid ratio (padding.rs).
pub enum Reference {
    /// `[B, Q, 2]`, all levels.
    Points(Tensor<3>),
    /// `[B, Q, 4]`, all levels.
    Boxes(Tensor<3>),
    /// `[B, Q, L, 2]`, per level.
    LevelPoints(Tensor<4>),
    /// `[B, Q, L, 4]`, per level.
    LevelBoxes(Tensor<4>),
}

/// Settings of one multi-scale deformable attention block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MsDeformAttnConfig {
    pub d_model: usize,
    pub num_heads: usize,
    pub num_levels: usize,
    pub num_points: usize,
    pub imp: MsdaImpl,
}

impl MsDeformAttnConfig {
    /// Deformable DETR's initialisation: zero offset weights with each head's bias pointing
    /// in its own direction (scaled by point index), zero attention logits, Xavier projections.
    pub fn init(&self, device: &burn::tensor::Device) -> crate::Result<MsDeformAttn> {
        use burn::nn::{Initializer, LinearConfig};
        let (h, l, p, d) = (
            self.num_heads,
            self.num_levels,
            self.num_points,
            self.d_model,
        );
        if h == 0 || !d.is_multiple_of(h) || l == 0 || p == 0 {
            return Err(crate::Error::InvalidArgument {
                what: "deformable attention",
                message: format!(
                    "d_model {d} must split into {h} heads; levels {l}, points {p} must be > 0"
                ),
            });
        }
        let zeros = Initializer::Zeros;
        let mut sampling_offsets = LinearConfig::new(d, h * l * p * 2)
            .with_initializer(zeros.clone())
            .init(device);
        let mut bias = Vec::with_capacity(h * l * p * 2);
        for hi in 0..h {
            let theta = hi as f64 * std::f64::consts::TAU / h as f64;
            let (c, s) = (theta.cos(), theta.sin());
            let m = c.abs().max(s.abs());
            for _ in 0..l {
                for pi in 0..p {
                    bias.push((c / m * (pi + 1) as f64) as f32);
                    bias.push((s / m * (pi + 1) as f64) as f32);
                }
            }
        }
        sampling_offsets.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [h * l * p * 2]),
            device,
        )));
        let xavier = Initializer::XavierUniform { gain: 1.0 };
        let proj = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_initializer(xavier.clone())
                .init(device)
                .map_bias_zero(device)
        };
        Ok(MsDeformAttn {
            sampling_offsets,
            attention_weights: LinearConfig::new(d, h * l * p)
                .with_initializer(zeros)
                .init(device),
            value_proj: proj(d, d),
            output_proj: proj(d, d),
            num_heads: h,
            num_levels: l,
            num_points: p,
            imp: self.imp,
        })
    }
}

trait ZeroBias {
    fn map_bias_zero(self, device: &burn::tensor::Device) -> Self;
}

impl ZeroBias for burn::nn::Linear {
    fn map_bias_zero(mut self, device: &burn::tensor::Device) -> Self {
        let n = self.weight.dims()[1];
        self.bias = Some(burn::module::Param::from_tensor(Tensor::zeros([n], device)));
        self
    }
}

/// Multi-scale deformable attention (the module around [`msda_core`]).
#[derive(burn::module::Module, Debug)]
pub struct MsDeformAttn {
    /// `d → H·L·P·2`
    pub sampling_offsets: burn::nn::Linear,
    /// `d → H·L·P`
    pub attention_weights: burn::nn::Linear,
    /// `d → d`
    pub value_proj: burn::nn::Linear,
    /// `d → d`
    pub output_proj: burn::nn::Linear,
    pub num_heads: usize,
    pub num_levels: usize,
    pub num_points: usize,
    #[module(skip)]
    pub imp: MsdaImpl,
}

impl MsDeformAttn {
    /// - `query`: `[B, Q, d]` (content + position already added by the caller)
    /// - `reference`: per query, normalised
    /// - `value`: `[B, S, d]`, all levels flattened
    /// - `shapes`: `[h_l, w_l]` per level
    /// - `value_mask`: `[B, S, 1]`, 0.0 for padded tokens, whose projected values are zeroed
    ///
    /// Returns `[B, Q, d]`.
    pub fn forward(
        &self,
        query: Tensor<3>,
        reference: &Reference,
        value: Tensor<3>,
        shapes: &[[usize; 2]],
        value_mask: Option<&Tensor<3>>,
    ) -> Tensor<3> {
        let device = query.device();
        let [b, q, d] = query.dims();
        let s = value.dims()[1];
        let (h, l, p) = (self.num_heads, self.num_levels, self.num_points);
        let mut value = ac::linear(&self.value_proj, value);
        if let Some(m) = value_mask {
            value = value * m.clone();
        }
        let value = value.reshape([b, s, h, d / h]);
        let offsets = ac::linear(&self.sampling_offsets, query.clone()).reshape([b, q, h, l, p, 2]);
        let weights = burn::tensor::activation::softmax(
            ac::linear(&self.attention_weights, query).reshape([b, q, h, l * p]),
            3,
        )
        .reshape([b, q, h, l, p]);
        // Offsets are in pixels of each level: divide by (w_l, h_l).
        let points = |r: Tensor<6>| {
            let norm: Vec<f32> = shapes
                .iter()
                .flat_map(|[hl, wl]| [*wl as f32, *hl as f32])
                .collect();
            let norm = Tensor::<1>::from_data(TensorData::new(norm, [l * 2]), &device)
                .reshape([1, 1, 1, l, 1, 2]);
            r + offsets.clone() / norm
        };
        // Offsets scale with the box: ± half its size spread over the points.
        let boxes = |r: Tensor<6>| {
            let xy = r.clone().narrow(5, 0, 2);
            let wh = r.narrow(5, 2, 2);
            xy + offsets.clone() / (p as f64) * wh * 0.5
        };
        let locations = match reference {
            Reference::Points(r) => points(r.clone().reshape([b, q, 1, 1, 1, 2])),
            Reference::LevelPoints(r) => points(r.clone().reshape([b, q, 1, l, 1, 2])),
            Reference::Boxes(r) => boxes(r.clone().reshape([b, q, 1, 1, 1, 4])),
            Reference::LevelBoxes(r) => boxes(r.clone().reshape([b, q, 1, l, 1, 4])),
        };
        let out = msda_core(value, shapes, locations, weights, self.imp);
        ac::linear(&self.output_proj, out)
    }
}

/// The reference of an exported MSDA call (graph value names).
pub enum EmitReference<'a> {
    /// `[N, Q, 2]` normalised points.
    Points(&'a str),
    /// `[N, Q, 4]` normalised cxcywh boxes.
    Boxes(&'a str),
    /// `[N, Q, L, 2]` per-level points (a padded batch).
    LevelPoints(&'a str),
    /// `[N, Q, L, 4]` per-level boxes (a padded batch).
    LevelBoxes(&'a str),
}

impl MsDeformAttn {
    /// ONNX emitter of [`MsDeformAttn::forward`]: `query` `[N, Q, d]`, `value` `[N, S, d]`
    /// over `levels` → `[N, Q, d]`; `value_mask` `[N, S, 1]` zeroes padded tokens' values.
    #[allow(clippy::too_many_arguments)]
    pub fn emit(
        &self,
        g: &mut crate::onnx::GraphBuilder,
        query: &str,
        reference: EmitReference<'_>,
        value: &str,
        levels: &crate::onnx::Levels,
        lowering: Msda,
        value_mask: Option<&str>,
    ) -> crate::Result<String> {
        use crate::onnx::builder::Attr;
        use crate::onnx::emit::linear;
        let (h, l, p) = (
            self.num_heads as i64,
            self.num_levels as i64,
            self.num_points as i64,
        );
        let d = self.value_proj.weight.dims()[1] as i64;
        let dh = d / h;
        let mut v = linear(g, &self.value_proj, value)?;
        if let Some(m) = value_mask {
            v = g.node("Mul", &[&v, m], vec![]);
        }
        let s_v = g.ints(&[0, -1, h, dh]);
        let v = g.node("Reshape", &[&v, &s_v], vec![]); // [N, S, H, dh]
        let off = linear(g, &self.sampling_offsets, query)?;
        let s_off = g.ints(&[0, -1, h, l, p, 2]);
        let off = g.node("Reshape", &[&off, &s_off], vec![]); // [N, Q, H, L, P, 2]
        let aw = linear(g, &self.attention_weights, query)?;
        let s_aw = g.ints(&[0, -1, h, l * p]);
        let aw = g.node("Reshape", &[&aw, &s_aw], vec![]);
        // Sampling positions, the attention softmax and the bilinear sampling stay fp32 in an
        // fp16 export: a position off by fp16's 1/2048 moves samples by pixels on big maps.
        g.begin_fp32();
        let aw = g.node("Softmax", &[&aw], vec![("axis", Attr::Int(-1))]); // [N, Q, H, L·P]
        let (r, is_box, per_level) = match reference {
            EmitReference::Points(r) => (r, false, 1),
            EmitReference::Boxes(r) => (r, true, 1),
            EmitReference::LevelPoints(r) => (r, false, l),
            EmitReference::LevelBoxes(r) => (r, true, l),
        };
        let loc = if !is_box {
            let norm = match &levels.fixed {
                Some(shapes) => {
                    let norm: Vec<f32> = shapes
                        .iter()
                        .flat_map(|[hl, wl]| [*wl as f32, *hl as f32])
                        .collect();
                    g.init_f32("msda_norm", &[1, 1, 1, l as usize, 1, 2], &norm)
                }
                None => {
                    let wh: Vec<&str> = levels
                        .levels
                        .iter()
                        .flat_map(|lv| [lv.wf.as_str(), lv.hf.as_str()])
                        .collect();
                    let all = g.node("Concat", &wh, vec![("axis", Attr::Int(0))]);
                    let s_n = g.ints(&[1, 1, 1, l, 1, 2]);
                    g.node("Reshape", &[&all, &s_n], vec![])
                }
            };
            let s_r = g.ints(&[0, -1, 1, per_level, 1, 2]);
            let r = g.node("Reshape", &[r, &s_r], vec![]);
            let o = g.node("Div", &[&off, &norm], vec![]);
            g.node("Add", &[&r, &o], vec![])
        } else {
            let s_r = g.ints(&[0, -1, 1, per_level, 1, 4]);
            let r = g.node("Reshape", &[r, &s_r], vec![]);
            let (st, m2, e2, e4, ax) = (
                g.ints(&[0]),
                g.ints(&[2]),
                g.ints(&[2]),
                g.ints(&[4]),
                g.ints(&[5]),
            );
            let xy = g.node("Slice", &[&r, &st, &m2, &ax], vec![]);
            let wh = g.node("Slice", &[&r, &e2, &e4, &ax], vec![]);
            let k = g.scalar(0.5 / p as f32);
            let o = g.node("Mul", &[&off, &wh], vec![]);
            let o = g.node("Mul", &[&o, &k], vec![]);
            g.node("Add", &[&xy, &o], vec![])
        };
        let sampling = Sampling {
            v: &v,
            loc: &loc,
            aw: &aw,
            levels,
            h,
            l,
            p,
            d,
            dh,
        };
        let o = match lowering {
            Msda::GridSample => emit_grid_sample(g, &sampling),
            Msda::Gather => emit_gather(g, &sampling),
        };
        g.end_fp32();
        linear(g, &self.output_proj, &o)
    }
}

/// What both MSDA lowerings consume: `v` `[N, S, H, dh]`, `loc` `[N, Q, H, L, P, 2]`,
/// `aw` `[N, Q, H, L·P]` (graph values) and the static dimensions.
#[derive(Clone, Copy)]
struct Sampling<'a> {
    v: &'a str,
    loc: &'a str,
    aw: &'a str,
    levels: &'a crate::onnx::Levels,
    h: i64,
    l: i64,
    p: i64,
    d: i64,
    dh: i64,
}

/// GridSample lowering of the sampling + weighting: `v` `[N, S, H, dh]`, `loc`
/// `[N, Q, H, L, P, 2]`, `aw` `[N, Q, H, L·P]` → `[N, Q, d]` (before the output projection).
///
/// Each level is sampled, weighted and reduced over its points before the next is sampled,
/// and the levels are summed as they come: the largest intermediate is one level's samples,
/// `[N·H, dh, Q, P]`, not all levels' `[N·H, dh, Q, L·P]` (2.2e9 elements for `paper-r50`'s
/// encoder at batch 8 and 800², past what CUDA kernels index with 32 bits).
fn emit_grid_sample(g: &mut crate::onnx::GraphBuilder, s: &Sampling<'_>) -> String {
    use crate::onnx::LevelDim;
    use crate::onnx::builder::Attr;
    let Sampling {
        v,
        loc,
        aw,
        levels,
        h,
        l,
        p,
        d,
        dh,
    } = *s;
    // grid coordinates for align_corners = 0: 2·loc − 1
    let two = g.scalar(2.0);
    let one = g.scalar(1.0);
    let grid = g.node("Mul", &[loc, &two], vec![]);
    let grid = g.node("Sub", &[&grid, &one], vec![]); // [N, Q, H, L, P, 2]
    let aw = g.node(
        "Transpose",
        &[aw],
        vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
    );
    let s_aw2 = g.ints(&[-1, 1, 0, l * p]);
    // [N, H, Q, L·P] → [N·H, 1, Q, L·P] (0 keeps Q)
    let aw = g.node("Reshape", &[&aw, &s_aw2], vec![]);
    let axis1 = g.ints(&[1]);
    let axis3 = g.ints(&[3]);
    let last = g.ints(&[-1]);
    // The sum over a level's P points is a MatMul with a ones column, not a ReduceSum: ONNX
    // Runtime's CUDA ReduceSum over a short innermost axis ran at ~25 GB/s (2.2 ms of every
    // 168 ms of paper-r50 at batch 1 per level, bench/results/gpu_profile.json).
    let ones = g.init_f32("msda_sum_points", &[p as usize, 1], &vec![1.0; p as usize]);
    let mut acc: Option<String> = None;
    for (lvl, lv) in levels.levels.iter().enumerate() {
        let vl = g.node("Slice", &[v, &lv.start, &lv.end, &axis1], vec![]); // [N, hw, H, dh]
        let vl = g.node(
            "Transpose",
            &[&vl],
            vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))],
        );
        let s_vl = lv.shape(g, &[-1, dh], &[LevelDim::H, LevelDim::W], &[]);
        let vl = g.node("Reshape", &[&vl, &s_vl], vec![]); // [N·H, dh, h, w]
        let (l0, l1) = (g.ints(&[lvl as i64]), g.ints(&[lvl as i64 + 1]));
        let gl = g.node("Slice", &[&grid, &l0, &l1, &axis3], vec![]); // [N, Q, H, 1, P, 2]
        let s_gl = g.ints(&[0, -1, h, p, 2]);
        let gl = g.node("Reshape", &[&gl, &s_gl], vec![]); // [N, Q, H, P, 2]
        let gl = g.node(
            "Transpose",
            &[&gl],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3, 4]))],
        );
        // [N, H, Q, P, 2] → [N·H, Q·P·2] → [N·H, Q, P, 2]
        let gl = g.node("Flatten", &[&gl], vec![("axis", Attr::Int(2))]);
        let s_g2 = g.ints(&[0, -1, p, 2]);
        let gl = g.node("Reshape", &[&gl, &s_g2], vec![]);
        let sl = g.node(
            "GridSample",
            &[&vl, &gl],
            vec![
                ("align_corners", Attr::Int(0)),
                ("mode", Attr::Str("bilinear".into())),
                ("padding_mode", Attr::Str("zeros".into())),
            ],
        ); // [N·H, dh, Q, P]
        let (p0, p1) = (g.ints(&[lvl as i64 * p]), g.ints(&[(lvl as i64 + 1) * p]));
        let awl = g.node("Slice", &[&aw, &p0, &p1, &last], vec![]); // [N·H, 1, Q, P]
        let prod = g.node("Mul", &[&sl, &awl], vec![]);
        let summed = g.node("MatMul", &[&prod, &ones], vec![]); // [N·H, dh, Q, 1]
        acc = Some(match acc {
            None => summed,
            Some(a) => g.node("Add", &[&a, &summed], vec![]),
        });
    }
    let summed = acc.unwrap_or_default();
    let s_o = g.ints(&[-1, d, 0]);
    let o = g.node("Reshape", &[&summed, &s_o], vec![]); // [N·H, dh, Q, 1] → [N, d, Q]
    g.node(
        "Transpose",
        &[&o],
        vec![("perm", Attr::Ints(vec![0, 2, 1]))],
    )
}

/// Gather lowering: bilinear sampling (align_corners = 0, zeros outside) as four corner
/// lookups of whole value rows (`GatherND` with one batch dimension, so the index tensor is
/// `[N·H, P·Q, 1]`, never expanded over channels) and their weights (invalid corners weigh
/// 0, the attention weight folded in). Like [`emit_grid_sample`], each level is reduced over
/// its corners and points before the next is sampled: the largest intermediate is one
/// corner's rows, `[N·H, P·Q, dh]`. Same inputs and output as [`emit_grid_sample`].
fn emit_gather(g: &mut crate::onnx::GraphBuilder, s: &Sampling<'_>) -> String {
    use crate::onnx::LevelDim;
    use crate::onnx::builder::Attr;
    let Sampling {
        v,
        loc,
        aw,
        levels,
        h,
        l,
        p,
        d,
        dh,
    } = *s;
    let axis1 = g.ints(&[1]);
    let axis2 = g.ints(&[2]);
    let axis3 = g.ints(&[3]);
    let (x0i, x1i) = (g.ints(&[0]), g.ints(&[1]));
    let (y0i, y1i) = (g.ints(&[1]), g.ints(&[2]));
    let half = g.scalar(0.5);
    let one = g.scalar(1.0);
    let zero = g.scalar(0.0);
    // Samples are laid out point-major ([N·H, P·Q, ·]) so that the sum over points is one
    // batched MatMul with a ones row over `[N·H, P, Q·dh]` (ONNX Runtime's CUDA ReduceSum over
    // a short axis is slow, see emit_grid_sample).
    // Attention weights [N, Q, H, L·P] → [N, Q, H, L, P] → [N, H, L, P, Q] → [N·H, L, P·Q, 1].
    let s_5 = g.ints(&[0, -1, h, l, p]);
    let awt = g.node("Reshape", &[aw, &s_5], vec![]);
    let awt = g.node(
        "Transpose",
        &[&awt],
        vec![("perm", Attr::Ints(vec![0, 2, 3, 4, 1]))],
    );
    let awt = g.node("Flatten", &[&awt], vec![("axis", Attr::Int(2))]);
    let s_q = g.ints(&[0, l, -1, 1]);
    let awt = g.node("Reshape", &[&awt, &s_q], vec![]);
    let s_col = g.ints(&[0, -1, 1]);
    let s_pts = g.ints(&[0, p, -1]);
    let s_rows = g.ints(&[0, -1, dh]);
    let ones = g.init_f32("msda_sum_points", &[1, p as usize], &vec![1.0; p as usize]);
    let mut acc: Option<String> = None;
    for (lvl, lv) in levels.levels.iter().enumerate() {
        let vl = g.node("Slice", &[v, &lv.start, &lv.end, &axis1], vec![]); // [N, hw, H, dh]
        let vl = g.node(
            "Transpose",
            &[&vl],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let s_vl = lv.shape(g, &[-1], &[LevelDim::Hw], &[dh]);
        let vl = g.node("Reshape", &[&vl, &s_vl], vec![]); // [N·H, hw, dh]
        let (l0, l1) = (g.ints(&[lvl as i64]), g.ints(&[lvl as i64 + 1]));
        let ll = g.node("Slice", &[loc, &l0, &l1, &axis3], vec![]); // [N, Q, H, 1, P, 2]
        let s_ll = g.ints(&[0, -1, h, p, 2]);
        let ll = g.node("Reshape", &[&ll, &s_ll], vec![]);
        let ll = g.node(
            "Transpose",
            &[&ll],
            vec![("perm", Attr::Ints(vec![0, 2, 3, 1, 4]))],
        ); // [N, H, P, Q, 2]
        let ll = g.node("Flatten", &[&ll], vec![("axis", Attr::Int(2))]); // [N·H, P·Q·2]
        let s_xy = g.ints(&[0, -1, 2]);
        let ll = g.node("Reshape", &[&ll, &s_xy], vec![]); // [N·H, P·Q, 2]
        let x = g.node("Slice", &[&ll, &x0i, &x1i, &axis2], vec![]); // [N·H, P·Q, 1]
        let y = g.node("Slice", &[&ll, &y0i, &y1i, &axis2], vec![]);
        let awl = g.node("Slice", &[&awt, &l0, &l1, &axis1], vec![]); // [N·H, 1, P·Q, 1]
        let awl = g.node("Reshape", &[&awl, &s_col], vec![]); // [N·H, P·Q, 1]
        let (wf, hf) = (lv.wf.clone(), lv.hf.clone());
        let px = g.node("Mul", &[&x, &wf], vec![]);
        let px = g.node("Sub", &[&px, &half], vec![]);
        let py = g.node("Mul", &[&y, &hf], vec![]);
        let py = g.node("Sub", &[&py, &half], vec![]);
        let fx = g.node("Floor", &[&px], vec![]);
        let fy = g.node("Floor", &[&py], vec![]);
        let lx = g.node("Sub", &[&px, &fx], vec![]);
        let ly = g.node("Sub", &[&py, &fy], vec![]);
        let hx = g.node("Sub", &[&one, &lx], vec![]);
        let hy = g.node("Sub", &[&one, &ly], vec![]);
        let fx1 = g.node("Add", &[&fx, &one], vec![]);
        let fy1 = g.node("Add", &[&fy, &one], vec![]);
        let (wmax, hmax) = match lv.fixed {
            Some([hl, wl]) => (g.scalar(wl as f32 - 1.0), g.scalar(hl as f32 - 1.0)),
            None => (
                g.node("Sub", &[&wf, &one], vec![]),
                g.node("Sub", &[&hf, &one], vec![]),
            ),
        };
        // Per axis and corner (floor, floor + 1): the clamped coordinate, which is the lookup
        // index, and the bilinear weight, zeroed where the clamp moved the corner (it lies
        // outside the map). Built once per axis rather than once per corner: `paper-r50`'s
        // graph has 29 % fewer nodes, and ONNX Runtime's session creation grows faster than
        // linearly with them (bench/results/msda_gather_nodes.json); on a GPU each node is a
        // kernel launch.
        let axis = |g: &mut crate::onnx::GraphBuilder, c: &str, w: &str, max: &str| {
            let cc = g.node("Clip", &[c, &zero, max], vec![]);
            let ok = g.node("Equal", &[&cc, c], vec![]);
            let okf = g.node("Cast", &[&ok], vec![("to", Attr::Int(1))]);
            let wm = g.node("Mul", &[w, &okf], vec![]);
            let ci = g.node("Cast", &[&cc], vec![("to", Attr::Int(7))]);
            (ci, wm) // [N·H, P·Q, 1] each
        };
        let (x0, wx0) = axis(g, &fx, &hx, &wmax);
        let (x1, wx1) = axis(g, &fx1, &lx, &wmax);
        let (y0, wy0) = axis(g, &fy, &hy, &hmax);
        let (y1, wy1) = axis(g, &fy1, &ly, &hmax);
        // the attention weight folds into the y weights, the row offset into the y indices
        let wy0 = g.node("Mul", &[&wy0, &awl], vec![]);
        let wy1 = g.node("Mul", &[&wy1, &awl], vec![]);
        let r0 = g.node("Mul", &[&y0, &lv.w], vec![]);
        let r1 = g.node("Mul", &[&y1, &lv.w], vec![]);
        let mut level_acc: Option<String> = None;
        for (row, cx, wy, wx) in [
            (&r0, &x0, &wy0, &wx0),
            (&r0, &x1, &wy0, &wx1),
            (&r1, &x0, &wy1, &wx0),
            (&r1, &x1, &wy1, &wx1),
        ] {
            let idx = g.node("Add", &[row, cx], vec![]); // [N·H, P·Q, 1]
            let vals = g.node("GatherND", &[&vl, &idx], vec![("batch_dims", Attr::Int(1))]);
            let wgt = g.node("Mul", &[wx, wy], vec![]);
            let vals = g.node("Mul", &[&vals, &wgt], vec![]); // [N·H, P·Q, dh]
            level_acc = Some(match level_acc {
                None => vals,
                Some(a) => g.node("Add", &[&a, &vals], vec![]),
            });
        }
        let vals = level_acc.unwrap_or_default(); // [N·H, P·Q, dh]
        let vals = g.node("Reshape", &[&vals, &s_pts], vec![]); // [N·H, P, Q·dh]
        let summed = g.node("MatMul", &[&ones, &vals], vec![]); // [N·H, 1, Q·dh]
        let summed = g.node("Reshape", &[&summed, &s_rows], vec![]); // [N·H, Q, dh]
        acc = Some(match acc {
            None => summed,
            Some(a) => g.node("Add", &[&a, &summed], vec![]),
        });
    }
    let summed = acc.unwrap_or_default();
    // [N·H, Q, dh] → [N·H, dh, Q] → [N, H·dh, Q] (0 keeps Q) → [N, Q, d]
    let t = g.node(
        "Transpose",
        &[&summed],
        vec![("perm", Attr::Ints(vec![0, 2, 1]))],
    );
    let s_o = g.ints(&[-1, d, 0]);
    let o = g.node("Reshape", &[&t, &s_o], vec![]);
    g.node(
        "Transpose",
        &[&o],
        vec![("perm", Attr::Ints(vec![0, 2, 1]))],
    )
}
