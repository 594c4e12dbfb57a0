//! Swin Transformer backbone (Liu et al. 2021), as the official Co-DINO Swin-L configs use it
//! (mmdetection's `SwinTransformer`, Sense-X's `SwinTransformerV1`: the same network):
//! a 4×4 patch embedding, four stages of window attention with shifted windows and relative
//! position bias, patch merging between stages, a LayerNorm on every returned map.
//!
//! Inputs of any size: the patch embedding pads right/bottom to a multiple of 4, window
//! attention pads right/bottom to a multiple of the window (padded tokens take part in
//! attention, as the official code has it), patch merging pads odd sizes to even.
//!
//! Patch merging concatenates each 2×2 neighbourhood channel-major (`c·4 + dy·2 + dx`,
//! mmdetection 3.x's `nn.Unfold` order); the importer reorders Sense-X's block-major weights.

use crate::model::autocast as ac;
use crate::model::drop_path::drop_path;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::onnx::GraphBuilder;
use crate::onnx::builder::Attr;

/// The patch size of the embedding (stride of the first map): fixed at 4, as every official
/// Swin detector has it (the level shapes assume it).
pub const PATCH: usize = 4;

/// Swin Transformer settings (four stages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwinConfig {
    /// Always `"swin"`: what tells a Swin backbone from a ResNet in a config.
    #[serde(rename = "type")]
    pub kind: SwinTag,
    /// Channels of stage 0 (doubling per stage). Swin-L: 192.
    pub embed_dims: usize,
    /// Blocks per stage. Swin-L: [2, 2, 18, 2].
    pub depths: [usize; 4],
    /// Attention heads per stage. Swin-L: [6, 12, 24, 48].
    pub num_heads: [usize; 4],
    /// Side of the attention windows (the shifted blocks shift by half of it). Swin-L: 12.
    pub window_size: usize,
    /// FFN width as a multiple of the stage's channels (official: 4).
    pub mlp_ratio: usize,
    /// Which stages' maps to return, as indices 0..=3 (Co-DINO 5-scale: all four).
    pub out_indices: Vec<usize>,
    /// Parameters that never train: 0 = none; n ≥ 1 = the patch embedding and the first n
    /// stages with their output norms (mmdetection's `frozen_stages = n`).
    pub frozen_stages: usize,
    /// Stochastic depth in training: the rate of the last block, rising linearly from 0 over
    /// all blocks ([`super::drop_path`]); 0 = off. Official Co-DINO Swin-L: 0.3 (1x schedule).
    /// Inference and export never drop anything.
    #[serde(default)]
    pub drop_path_rate: f64,
}

/// The tag value of [`SwinConfig::kind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwinTag {
    #[default]
    Swin,
}

impl SwinConfig {
    /// Swin-L with 12×12 windows (the official Co-DINO Swin-L backbone).
    pub fn large() -> Self {
        Self {
            kind: SwinTag::Swin,
            embed_dims: 192,
            depths: [2, 2, 18, 2],
            num_heads: [6, 12, 24, 48],
            window_size: 12,
            mlp_ratio: 4,
            out_indices: vec![0, 1, 2, 3],
            frozen_stages: 0,
            drop_path_rate: 0.3,
        }
    }

    /// Channels of the four stages.
    pub fn stage_channels(&self) -> [usize; 4] {
        let c = self.embed_dims;
        [c, 2 * c, 4 * c, 8 * c]
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(Error::InvalidArgument {
                what: "swin backbone config",
                message: m,
            })
        };
        if self.embed_dims == 0 || self.mlp_ratio == 0 {
            return bad("embed_dims and mlp_ratio must be > 0".into());
        }
        if self.depths.contains(&0) {
            return bad(format!("every stage needs a block, got {:?}", self.depths));
        }
        for (c, h) in self.stage_channels().iter().zip(self.num_heads) {
            if h == 0 || c % h != 0 {
                return bad(format!(
                    "stage channels {:?} must be multiples of num_heads {:?}",
                    self.stage_channels(),
                    self.num_heads
                ));
            }
        }
        if self.window_size < 2 {
            return bad(format!("window_size {} < 2", self.window_size));
        }
        if self.frozen_stages > 4 {
            return bad(format!("frozen_stages {} > 4", self.frozen_stages));
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return bad(format!(
                "drop_path_rate {} is outside [0, 1)",
                self.drop_path_rate
            ));
        }
        if self.out_indices.is_empty()
            || self.out_indices.iter().any(|&i| i > 3)
            || self.out_indices.windows(2).any(|w| w[0] >= w[1])
        {
            return bad(format!(
                "out_indices must be increasing values in 0..=3, got {:?}",
                self.out_indices
            ));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<SwinTransformer> {
        self.validate()?;
        let ch = self.stage_channels();
        let frozen = |on: bool, m: LayerNorm| if on { m.no_grad() } else { m };
        let patch_embed = PatchEmbed {
            proj: Conv2dConfig::new([3, ch[0]], [PATCH, PATCH])
                .with_stride([PATCH, PATCH])
                .init(device),
            norm: LayerNormConfig::new(ch[0]).init(device),
        };
        let patch_embed = if self.frozen_stages >= 1 {
            patch_embed.no_grad()
        } else {
            patch_embed
        };
        let last = *self.out_indices.last().unwrap_or(&3);
        // over all blocks of the four stages, built or not (the official schedule)
        let rates = super::drop_path::rates(self.drop_path_rate, self.depths.iter().sum());
        let mut stages = Vec::with_capacity(4);
        for (s, &c) in ch.iter().enumerate() {
            let first = self.depths[..s].iter().sum::<usize>();
            let blocks = (0..self.depths[s])
                .map(|j| {
                    let mut b = SwinBlock::new(
                        c,
                        self.num_heads[s],
                        self.window_size,
                        if j % 2 == 1 { self.window_size / 2 } else { 0 },
                        c * self.mlp_ratio,
                        device,
                    );
                    b.drop_path = rates[first + j];
                    b
                })
                .collect();
            // The last stage merges nothing; neither does the stage of the last returned map
            // (its merge would feed a stage that is never built).
            let downsample = (s < 3 && s < last).then(|| PatchMerging {
                norm: LayerNormConfig::new(4 * c).init(device),
                reduction: linear(4 * c, 2 * c, false, device),
            });
            let stage = SwinStage { blocks, downsample };
            stages.push(if self.frozen_stages > s {
                stage.no_grad()
            } else {
                stage
            });
            if s == last {
                break;
            }
        }
        let norms = (0..=last)
            .map(|i| {
                self.out_indices.contains(&i).then(|| {
                    frozen(
                        self.frozen_stages > i,
                        LayerNormConfig::new(ch[i]).init(device),
                    )
                })
            })
            .collect();
        Ok(SwinTransformer {
            patch_embed,
            stages,
            norms,
        })
    }
}

/// A Linear with the official Swin initialisation (normal, std 0.02; zero bias).
fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    let mut l = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
        .init(device);
    if bias {
        l.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    }
    l
}

/// The 4×4 stride-4 patch projection and its LayerNorm.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// `3 → C`, kernel and stride 4, no padding (the input is padded first).
    pub proj: Conv2d,
    pub norm: LayerNorm,
}

/// Window attention with a learned relative position bias.
#[derive(Module, Debug)]
pub struct WindowAttention {
    /// `C → 3C`: q, k, v (in that order, heads inside each).
    pub qkv: Linear,
    /// `C → C`
    pub proj: Linear,
    /// `[(2w−1)², heads]`: the bias of every relative offset (dy, dx), row `(dy+w−1)(2w−1) +
    /// dx+w−1`.
    pub relative_position_bias_table: Param<Tensor<2>>,
    pub num_heads: usize,
    pub window: usize,
}

/// One Swin block: `x + WMSA(LN(x))`, then `x + FFN(LN(x))` (pre-norm, GELU).
#[derive(Module, Debug)]
pub struct SwinBlock {
    pub norm1: LayerNorm,
    pub attn: WindowAttention,
    pub norm2: LayerNorm,
    /// `C → mlp_ratio·C`
    pub fc1: Linear,
    /// `mlp_ratio·C → C`
    pub fc2: Linear,
    /// 0 (regular windows) or `window / 2` (shifted windows, every second block).
    pub shift: usize,
    /// Stochastic-depth rate of both residual branches (training only, [`super::drop_path`]).
    pub drop_path: f64,
}

/// 2×2 neighbourhoods → one token: LayerNorm over the `4C` concatenation, then `4C → 2C`.
#[derive(Module, Debug)]
pub struct PatchMerging {
    pub norm: LayerNorm,
    pub reduction: Linear,
}

/// A stage: its blocks, then (except the last) the merge that halves the map.
#[derive(Module, Debug)]
pub struct SwinStage {
    pub blocks: Vec<SwinBlock>,
    pub downsample: Option<PatchMerging>,
}

/// The trunk. Field names follow mmdetection's (`patch_embed`, `stages.N.blocks.M`); the
/// official `norm{i}` of output `i` is `norms.i`.
#[derive(Module, Debug)]
pub struct SwinTransformer {
    pub patch_embed: PatchEmbed,
    pub stages: Vec<SwinStage>,
    /// Per stage up to the last returned one: the LayerNorm of its output map, if returned.
    pub norms: Vec<Option<LayerNorm>>,
}

/// Row of the bias table for every (query, key) pair of a `w × w` window, `[w², w²]` flat.
pub fn relative_position_index(w: usize) -> Vec<i64> {
    let n = w * w;
    let span = (2 * w - 1) as i64;
    let mut idx = Vec::with_capacity(n * n);
    for q in 0..n {
        for k in 0..n {
            let dy = (q / w) as i64 - (k / w) as i64 + w as i64 - 1;
            let dx = (q % w) as i64 - (k % w) as i64 + w as i64 - 1;
            idx.push(dy * span + dx);
        }
    }
    idx
}

/// The shifted-window attention mask of an `hp × wp` padded map (multiples of `w`):
/// `[nW, w², w²]` flat, 0 within a region of the rolled map and −100 across regions
/// (the official value: tokens rolled in from the opposite edge do not attend to each other).
pub fn shift_mask(hp: usize, wp: usize, w: usize, shift: usize) -> Vec<f32> {
    let region = |i: usize, n: usize| {
        if i < n - w {
            0
        } else if i < n - shift {
            1
        } else {
            2
        }
    };
    let (nh, nw) = (hp / w, wp / w);
    let n = w * w;
    let mut mask = Vec::with_capacity(nh * nw * n * n);
    for wy in 0..nh {
        for wx in 0..nw {
            let label = |t: usize| {
                let (y, x) = (wy * w + t / w, wx * w + t % w);
                region(y, hp) * 3 + region(x, wp)
            };
            for q in 0..n {
                for k in 0..n {
                    mask.push(if label(q) == label(k) { 0.0 } else { -100.0 });
                }
            }
        }
    }
    mask
}

/// Padding that brings `n` to a multiple of `m`.
fn pad_to(n: usize, m: usize) -> usize {
    (m - n % m) % m
}

impl WindowAttention {
    fn new(c: usize, heads: usize, window: usize, device: &Device) -> Self {
        let span = 2 * window - 1;
        Self {
            qkv: linear(c, 3 * c, true, device),
            proj: linear(c, c, true, device),
            relative_position_bias_table: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([span * span, heads], device),
            num_heads: heads,
            window,
        }
    }

    /// `[heads, w², w²]` bias of every (query, key) pair.
    fn bias(&self) -> Tensor<3> {
        let table = self.relative_position_bias_table.val();
        let n = self.window * self.window;
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(relative_position_index(self.window), [n * n]),
            &table.device(),
        );
        super::rows::gather_rows(table, idx)
            .reshape([n, n, self.num_heads])
            .permute([2, 0, 1])
    }

    /// `x`: `[B·nW, w², C]` window tokens; `mask`: `[nW, w², w²]` → `[B·nW, w², C]`.
    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<3>>) -> Tensor<3> {
        let [bw, n, c] = x.dims();
        let h = self.num_heads;
        let hd = c / h;
        let qkv = ac::linear(&self.qkv, x)
            .reshape([bw, n, 3, h, hd])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .slice([i..i + 1, 0..bw, 0..h, 0..n, 0..hd])
                .reshape([bw, h, n, hd])
        };
        let q = part(0) * (hd as f64).powf(-0.5);
        let (k, v) = (part(1), part(2));
        let mut attn = ac::matmul(q, k.swap_dims(2, 3)) + self.bias().unsqueeze::<4>();
        if let Some(m) = mask {
            let nw = m.dims()[0];
            attn = (attn.reshape([bw / nw, nw, h, n, n]) + m.unsqueeze_dim::<4>(1).unsqueeze())
                .reshape([bw, h, n, n]);
        }
        let y = ac::matmul(softmax(attn, 3), v)
            .swap_dims(1, 2)
            .reshape([bw, n, c]);
        ac::linear(&self.proj, y)
    }
}

impl SwinBlock {
    fn new(
        c: usize,
        heads: usize,
        window: usize,
        shift: usize,
        hidden: usize,
        device: &Device,
    ) -> Self {
        Self {
            norm1: LayerNormConfig::new(c).init(device),
            attn: WindowAttention::new(c, heads, window, device),
            norm2: LayerNormConfig::new(c).init(device),
            fc1: linear(c, hidden, true, device),
            fc2: linear(hidden, c, true, device),
            shift,
            drop_path: 0.0,
        }
    }

    /// `x`: `[B, H·W, C]` tokens of an `[h, w]` map → same shape. `mask`: the stage's shift
    /// mask, made by the first shifted block and shared by the others (same map, same windows).
    pub fn forward(
        &self,
        x: Tensor<3>,
        [h, w]: [usize; 2],
        mask: &mut Option<Tensor<3>>,
    ) -> Tensor<3> {
        let [b, _, c] = x.dims();
        let ws = self.attn.window;
        let (pb, pr) = (pad_to(h, ws), pad_to(w, ws));
        let (hp, wp) = (h + pb, w + pr);
        let s = self.shift;
        let mut y = self.norm1.forward(x.clone()).reshape([b, h, w, c]);
        if pb + pr > 0 {
            y = y.pad([(0, pb), (0, pr), (0, 0)], PadMode::Constant(0.0));
        }
        if s > 0 {
            y = y.roll(&[-(s as i64), -(s as i64)], &[1, 2]);
        }
        let windows = y
            .reshape([b, hp / ws, ws, wp / ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b * (hp / ws) * (wp / ws), ws * ws, c]);
        let mask = (s > 0).then(|| {
            mask.get_or_insert_with(|| {
                let nw = (hp / ws) * (wp / ws);
                Tensor::<3>::from_data(
                    TensorData::new(shift_mask(hp, wp, ws, s), [nw, ws * ws, ws * ws]),
                    &x.device(),
                )
            })
            .clone()
        });
        let mut y = self
            .attn
            .forward(windows, mask)
            .reshape([b, hp / ws, wp / ws, ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b, hp, wp, c]);
        if s > 0 {
            y = y.roll(&[s as i64, s as i64], &[1, 2]);
        }
        let y = y.slice([0..b, 0..h, 0..w, 0..c]).reshape([b, h * w, c]);
        let x = x + drop_path(y, self.drop_path);
        let f = ac::linear(
            &self.fc2,
            gelu(ac::linear(&self.fc1, self.norm2.forward(x.clone()))),
        );
        x + drop_path(f, self.drop_path)
    }
}

impl PatchMerging {
    /// `x`: `[B, H·W, C]` of an `[h, w]` map → `[B, ⌈h/2⌉·⌈w/2⌉, 2C]`.
    pub fn forward(&self, x: Tensor<3>, [h, w]: [usize; 2]) -> Tensor<3> {
        let [b, _, c] = x.dims();
        let (pb, pr) = (h % 2, w % 2);
        let mut y = x.reshape([b, h, w, c]);
        if pb + pr > 0 {
            y = y.pad([(0, pb), (0, pr), (0, 0)], PadMode::Constant(0.0));
        }
        let (h2, w2) = ((h + pb) / 2, (w + pr) / 2);
        let y = y
            .reshape([b, h2, 2, w2, 2, c])
            .permute([0, 1, 3, 5, 2, 4])
            .reshape([b, h2 * w2, 4 * c]);
        ac::linear(&self.reduction, self.norm.forward(y))
    }
}

impl SwinTransformer {
    /// `x`: normalised images `[B, 3, H, W]` → the selected stage maps, each
    /// `[B, C_i, ⌈H/s_i⌉, ⌈W/s_i⌉]` with strides 4, 8, 16, 32.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let [_, _, h, w] = x.dims();
        let x = x.pad(
            (0, pad_to(w, PATCH), 0, pad_to(h, PATCH)),
            PadMode::Constant(0.0),
        );
        let y = ac::conv2d(&self.patch_embed.proj, x);
        let [b, c, mut hh, mut ww] = y.dims();
        let mut t = self
            .patch_embed
            .norm
            .forward(y.reshape([b, c, hh * ww]).swap_dims(1, 2));
        let mut outs = Vec::with_capacity(self.norms.len());
        for (s, stage) in self.stages.iter().enumerate() {
            let mut mask = None;
            for block in &stage.blocks {
                t = block.forward(t, [hh, ww], &mut mask);
            }
            if let Some(Some(norm)) = self.norms.get(s) {
                let c = t.dims()[2];
                let o = norm.forward(t.clone());
                outs.push(o.swap_dims(1, 2).reshape([b, c, hh, ww]));
            }
            if let Some(m) = &stage.downsample {
                t = m.forward(t, [hh, ww]);
                (hh, ww) = (hh.div_ceil(2), ww.div_ceil(2));
            }
        }
        outs
    }
}

// ---- ONNX -------------------------------------------------------------------------------

/// A map dimension in the graph: a constant at a fixed input size, an int64 `[1]` value
/// derived from `Shape` under `--dynamic-size` (never a ScatterND into a shape).
#[derive(Debug, Clone)]
enum Dim {
    Fixed(i64),
    Dyn(String),
}

impl Dim {
    /// Dimension `axis` of `x`.
    fn of(g: &mut GraphBuilder, x: &str, axis: i64) -> Dim {
        let shape = g.node("Shape", &[x], vec![]);
        let (a, b) = (g.ints(&[axis]), g.ints(&[axis + 1]));
        Dim::Dyn(g.node("Slice", &[&shape, &a, &b], vec![]))
    }

    fn value(&self, g: &mut GraphBuilder) -> String {
        match self {
            Dim::Fixed(v) => g.ints(&[*v]),
            Dim::Dyn(s) => s.clone(),
        }
    }

    fn binary(&self, g: &mut GraphBuilder, op: &str, other: &Dim, f: fn(i64, i64) -> i64) -> Dim {
        match (self, other) {
            (Dim::Fixed(a), Dim::Fixed(b)) => Dim::Fixed(f(*a, *b)),
            _ => {
                let (a, b) = (self.value(g), other.value(g));
                Dim::Dyn(g.node(op, &[&a, &b], vec![]))
            }
        }
    }

    fn add(&self, g: &mut GraphBuilder, other: &Dim) -> Dim {
        self.binary(g, "Add", other, |a, b| a + b)
    }

    fn mul(&self, g: &mut GraphBuilder, other: &Dim) -> Dim {
        self.binary(g, "Mul", other, |a, b| a * b)
    }

    /// `self / k`, rounded down (sizes are non-negative).
    fn div(&self, g: &mut GraphBuilder, k: i64) -> Dim {
        self.binary(g, "Div", &Dim::Fixed(k), |a, b| a / b)
    }

    /// `self mod k`.
    fn rem(&self, g: &mut GraphBuilder, k: i64) -> Dim {
        self.binary(g, "Mod", &Dim::Fixed(k), |a, b| a % b)
    }

    /// The padding that brings `self` to a multiple of `m`: `(m − self mod m) mod m`.
    fn pad_to(&self, g: &mut GraphBuilder, m: i64) -> Dim {
        let r = self.rem(g, m);
        Dim::Fixed(m).binary(g, "Sub", &r, |a, b| a - b).rem(g, m)
    }

    fn is_zero(&self) -> bool {
        matches!(self, Dim::Fixed(0))
    }
}

/// int64 `[k]` of `dims`: a constant when all are fixed, else their Concat.
fn shape_of(g: &mut GraphBuilder, dims: &[Dim]) -> String {
    if let Some(v) = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => Some(*v),
            Dim::Dyn(_) => None,
        })
        .collect::<Option<Vec<i64>>>()
    {
        return g.ints(&v);
    }
    let parts: Vec<String> = dims.iter().map(|d| d.value(g)).collect();
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    g.node("Concat", &refs, vec![("axis", Attr::Int(0))])
}

/// `axis` of `x` rolled by `shift` (positive: towards the end), as two Slices and a Concat;
/// negative Slice bounds count from the end, so no size is needed.
fn emit_roll(g: &mut GraphBuilder, x: &str, axis: i64, shift: i64) -> String {
    let ax = g.ints(&[axis]);
    let (z, end, cut) = (g.ints(&[0]), g.ints(&[i64::MAX]), g.ints(&[-shift]));
    // shift > 0: x[n−s:] then x[:n−s]; shift < 0: x[|s|:] then x[:|s|].
    let tail = g.node("Slice", &[x, &cut, &end, &ax], vec![]);
    let head = g.node("Slice", &[x, &z, &cut, &ax], vec![]);
    g.node("Concat", &[&tail, &head], vec![("axis", Attr::Int(axis))])
}

/// Right/bottom zero padding of `[B, H, W, C]` (pads of `[B, C, H, W]` with `nchw`).
fn emit_pad_hw(g: &mut GraphBuilder, x: &str, pb: &Dim, pr: &Dim, nchw: bool) -> String {
    if pb.is_zero() && pr.is_zero() {
        return x.to_string();
    }
    let z = || Dim::Fixed(0);
    let ends = if nchw {
        [z(), z(), pb.clone(), pr.clone()]
    } else {
        [z(), pb.clone(), pr.clone(), z()]
    };
    let mut dims = vec![z(), z(), z(), z()];
    dims.extend(ends);
    let pads = shape_of(g, &dims);
    g.node("Pad", &[x, &pads], vec![])
}

/// The exact (erf) GELU, `x·(1 + erf(x/√2))/2`: opset 17 has no Gelu node.
fn emit_gelu(g: &mut GraphBuilder, x: &str) -> String {
    let r = g.scalar(std::f32::consts::FRAC_1_SQRT_2);
    let (one, half) = (g.scalar(1.0), g.scalar(0.5));
    let e = g.node("Mul", &[x, &r], vec![]);
    let e = g.node("Erf", &[&e], vec![]);
    let e = g.node("Add", &[&e, &one], vec![]);
    let y = g.node("Mul", &[x, &e], vec![]);
    g.node("Mul", &[&y, &half], vec![])
}

/// [`shift_mask`] in the graph for a padded map of symbolic size: float `[nW, 1, w², w²]`.
fn emit_shift_mask(g: &mut GraphBuilder, hp: &Dim, wp: &Dim, w: usize, shift: usize) -> String {
    // region of every row / column: (i ≥ n − w) + (i ≥ n − shift), 0..=2
    let region = |g: &mut GraphBuilder, n: &Dim| {
        let n = n.value(g);
        let sq = g.ints(&[0]);
        let ns = g.node("Squeeze", &[&n, &sq], vec![]);
        let (z, one) = (g.init_i64("r0", &[], &[0]), g.init_i64("r1", &[], &[1]));
        let i = g.node("Range", &[&z, &ns, &one], vec![]);
        let ge = |g: &mut GraphBuilder, back: usize| {
            let b = g.ints(&[back as i64]);
            let edge = g.node("Sub", &[&n, &b], vec![]);
            let ge = g.node("GreaterOrEqual", &[&i, &edge], vec![]);
            g.node("Cast", &[&ge], vec![("to", Attr::Int(7))])
        };
        let (a, b) = (ge(g, w), ge(g, shift));
        g.node("Add", &[&a, &b], vec![])
    };
    let (ry, rx) = (region(g, hp), region(g, wp));
    let three = g.ints(&[3]);
    let ry = g.node("Mul", &[&ry, &three], vec![]);
    let ax1 = g.ints(&[1]);
    let ry = g.node("Unsqueeze", &[&ry, &ax1], vec![]);
    let labels = g.node("Add", &[&ry, &rx], vec![]); // [hp, wp]
    let wi = w as i64;
    let (nh, nw) = (hp.div(g, wi), wp.div(g, wi));
    let split = shape_of(g, &[nh, Dim::Fixed(wi), nw, Dim::Fixed(wi)]);
    let l = g.node("Reshape", &[&labels, &split], vec![]);
    let l = g.node(
        "Transpose",
        &[&l],
        vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
    );
    let flat = g.ints(&[-1, wi * wi]);
    let l = g.node("Reshape", &[&l, &flat], vec![]); // [nW, n]
    let (a2, a1) = (g.ints(&[2]), g.ints(&[1]));
    let q = g.node("Unsqueeze", &[&l, &a2], vec![]);
    let k = g.node("Unsqueeze", &[&l, &a1], vec![]);
    let same = g.node("Equal", &[&q, &k], vec![]);
    let diff = g.node("Not", &[&same], vec![]);
    let diff = g.node("Cast", &[&diff], vec![("to", Attr::Int(1))]);
    let hundred = g.scalar(-100.0);
    let m = g.node("Mul", &[&diff, &hundred], vec![]);
    g.node("Unsqueeze", &[&m, &a1], vec![])
}

impl WindowAttention {
    /// ONNX emitter of [`WindowAttention::forward`]; `mask`: float `[nW, 1, w², w²]` and `nW`.
    fn emit(&self, g: &mut GraphBuilder, x: &str, mask: Option<(&str, &Dim)>) -> Result<String> {
        use crate::onnx::emit::{host, linear as lin};
        let c = self.qkv.weight.dims()[0];
        let (h, n) = (self.num_heads, self.window * self.window);
        let hd = c / h;
        let qkv = lin(g, &self.qkv, x)?;
        let split = g.ints(&[0, n as i64, 3, h as i64, hd as i64]);
        let qkv = g.node("Reshape", &[&qkv, &split], vec![]);
        let qkv = g.node(
            "Transpose",
            &[&qkv],
            vec![("perm", Attr::Ints(vec![2, 0, 3, 1, 4]))],
        );
        let part = |g: &mut GraphBuilder, i: i64| {
            let i = g.init_i64("i", &[], &[i]);
            g.node("Gather", &[&qkv, &i], vec![("axis", Attr::Int(0))])
        };
        let (q, k, v) = (part(g, 0), part(g, 1), part(g, 2));
        let scale = g.scalar((hd as f32).powf(-0.5));
        let q = g.node("Mul", &[&q, &scale], vec![]);
        let kt = g.node(
            "Transpose",
            &[&k],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
        );
        let attn = g.node("MatMul", &[&q, &kt], vec![]);
        // The bias gathered from the table in the graph: the file keeps the table's size.
        let table = g.init_f32(
            "rel_table",
            &self.relative_position_bias_table.dims(),
            &host(self.relative_position_bias_table.val())?,
        );
        let idx = g.init_i64("rel_index", &[n * n], &relative_position_index(self.window));
        let bias = g.node("Gather", &[&table, &idx], vec![("axis", Attr::Int(0))]);
        let to = g.ints(&[n as i64, n as i64, h as i64]);
        let bias = g.node("Reshape", &[&bias, &to], vec![]);
        let bias = g.node(
            "Transpose",
            &[&bias],
            vec![("perm", Attr::Ints(vec![2, 0, 1]))],
        );
        let mut attn = g.node("Add", &[&attn, &bias], vec![]);
        if let Some((m, nw)) = mask {
            // [B·nW, h, n, n] → [B, nW, h, n, n] + [nW, 1, n, n] → back
            let (hh, nn) = (Dim::Fixed(h as i64), Dim::Fixed(n as i64));
            let to5 = shape_of(g, &[Dim::Fixed(-1), nw.clone(), hh, nn.clone(), nn]);
            let a5 = g.node("Reshape", &[&attn, &to5], vec![]);
            let s = g.node("Add", &[&a5, m], vec![]);
            let to4 = g.ints(&[-1, h as i64, n as i64, n as i64]);
            attn = g.node("Reshape", &[&s, &to4], vec![]);
        }
        let p = g.node("Softmax", &[&attn], vec![("axis", Attr::Int(-1))]);
        let y = g.node("MatMul", &[&p, &v], vec![]);
        let y = g.node(
            "Transpose",
            &[&y],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let back = g.ints(&[0, n as i64, c as i64]);
        let y = g.node("Reshape", &[&y, &back], vec![]);
        lin(g, &self.proj, &y)
    }
}

impl SwinBlock {
    /// ONNX emitter of [`SwinBlock::forward`]: `x` `[B, h·w, C]` of an `[h, w]` map; `mask`
    /// the stage's shift mask, emitted once.
    fn emit(
        &self,
        g: &mut GraphBuilder,
        x: &str,
        h: &Dim,
        w: &Dim,
        mask: &mut Option<String>,
    ) -> Result<String> {
        use crate::onnx::emit::{layer_norm, linear as lin};
        let c = Dim::Fixed(self.norm1.gamma.dims()[0] as i64);
        let ws = self.attn.window as i64;
        let (pb, pr) = (h.pad_to(g, ws), w.pad_to(g, ws));
        let (hp, wp) = (h.add(g, &pb), w.add(g, &pr));
        let s = self.shift as i64;
        let y = layer_norm(g, &self.norm1, x)?;
        let to_map = shape_of(g, &[Dim::Fixed(-1), h.clone(), w.clone(), c.clone()]);
        let y = g.node("Reshape", &[&y, &to_map], vec![]);
        let mut y = emit_pad_hw(g, &y, &pb, &pr, false);
        if s > 0 {
            y = emit_roll(g, &y, 1, -s);
            y = emit_roll(g, &y, 2, -s);
        }
        let (nh, nw) = (hp.div(g, ws), wp.div(g, ws));
        let wsd = Dim::Fixed(ws);
        let part = shape_of(
            g,
            &[
                Dim::Fixed(-1),
                nh.clone(),
                wsd.clone(),
                nw.clone(),
                wsd.clone(),
                c.clone(),
            ],
        );
        let y = g.node("Reshape", &[&y, &part], vec![]);
        let y = g.node(
            "Transpose",
            &[&y],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2, 4, 5]))],
        );
        let cv = self.norm1.gamma.dims()[0] as i64;
        let flat = g.ints(&[-1, ws * ws, cv]);
        let windows = g.node("Reshape", &[&y, &flat], vec![]);
        let nwin = nh.mul(g, &nw);
        if s > 0 && mask.is_none() {
            *mask = Some(match (&hp, &wp) {
                (Dim::Fixed(a), Dim::Fixed(b)) => {
                    let n = (ws * ws) as usize;
                    g.init_f32(
                        "shift_mask",
                        &[((a / ws) * (b / ws)) as usize, 1, n, n],
                        &shift_mask(*a as usize, *b as usize, ws as usize, self.shift),
                    )
                }
                _ => emit_shift_mask(g, &hp, &wp, ws as usize, self.shift),
            });
        }
        let shifted = mask.as_deref().filter(|_| s > 0).map(|m| (m, &nwin));
        let y = self.attn.emit(g, &windows, shifted)?;
        let unpart = shape_of(g, &[Dim::Fixed(-1), nh, nw, wsd.clone(), wsd, c.clone()]);
        let y = g.node("Reshape", &[&y, &unpart], vec![]);
        let y = g.node(
            "Transpose",
            &[&y],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2, 4, 5]))],
        );
        let to_pad = shape_of(g, &[Dim::Fixed(-1), hp, wp, c.clone()]);
        let mut y = g.node("Reshape", &[&y, &to_pad], vec![]);
        if s > 0 {
            y = emit_roll(g, &y, 1, s);
            y = emit_roll(g, &y, 2, s);
        }
        if !(pb.is_zero() && pr.is_zero()) {
            let st = g.ints(&[0, 0]);
            let en = shape_of(g, &[h.clone(), w.clone()]);
            let ax = g.ints(&[1, 2]);
            y = g.node("Slice", &[&y, &st, &en, &ax], vec![]);
        }
        let to_tokens = g.ints(&[0, -1, cv]);
        let y = g.node("Reshape", &[&y, &to_tokens], vec![]);
        let x = g.node("Add", &[x, &y], vec![]);
        let f = layer_norm(g, &self.norm2, &x)?;
        let f = lin(g, &self.fc1, &f)?;
        let f = emit_gelu(g, &f);
        let f = lin(g, &self.fc2, &f)?;
        Ok(g.node("Add", &[&x, &f], vec![]))
    }
}

impl PatchMerging {
    /// ONNX emitter of [`PatchMerging::forward`]: `x` `[B, h·w, C]` → `[B, ⌈h/2⌉·⌈w/2⌉, 2C]`.
    fn emit(&self, g: &mut GraphBuilder, x: &str, h: &Dim, w: &Dim) -> Result<String> {
        use crate::onnx::emit::{layer_norm, linear as lin};
        let c = self.norm.gamma.dims()[0] as i64 / 4;
        let to_map = shape_of(g, &[Dim::Fixed(-1), h.clone(), w.clone(), Dim::Fixed(c)]);
        let y = g.node("Reshape", &[x, &to_map], vec![]);
        let (pb, pr) = (h.rem(g, 2), w.rem(g, 2));
        let y = emit_pad_hw(g, &y, &pb, &pr, false);
        let (h2, w2) = (h.add(g, &pb).div(g, 2), w.add(g, &pr).div(g, 2));
        let two = Dim::Fixed(2);
        let split = shape_of(
            g,
            &[Dim::Fixed(-1), h2, two.clone(), w2, two, Dim::Fixed(c)],
        );
        let y = g.node("Reshape", &[&y, &split], vec![]);
        let y = g.node(
            "Transpose",
            &[&y],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 5, 2, 4]))],
        );
        let flat = g.ints(&[0, -1, 4 * c]);
        let y = g.node("Reshape", &[&y, &flat], vec![]);
        let y = layer_norm(g, &self.norm, &y)?;
        lin(g, &self.reduction, &y)
    }
}

impl SwinTransformer {
    /// ONNX emitter of [`SwinTransformer::forward`]: `x` normalised NCHW → the selected maps
    /// (NCHW). `size`: the fixed input `[h, w]` (every shape a constant), or `None` for a graph
    /// of dynamic size (shapes, paddings and shift masks derived from `Shape` in the graph).
    pub fn emit(
        &self,
        g: &mut GraphBuilder,
        x: &str,
        size: Option<[usize; 2]>,
    ) -> Result<Vec<String>> {
        use crate::onnx::emit::{conv2d, layer_norm};
        let p = PATCH as i64;
        let (h, w) = match size {
            Some([h, w]) => (Dim::Fixed(h as i64), Dim::Fixed(w as i64)),
            None => (Dim::of(g, x, 2), Dim::of(g, x, 3)),
        };
        let (pb, pr) = (h.pad_to(g, p), w.pad_to(g, p));
        let x = emit_pad_hw(g, x, &pb, &pr, true);
        let y = conv2d(g, &self.patch_embed.proj, &x, None)?;
        let c0 = self.patch_embed.norm.gamma.dims()[0] as i64;
        let mut hh = h.add(g, &pb).div(g, p);
        let mut ww = w.add(g, &pr).div(g, p);
        let flat = g.ints(&[0, c0, -1]);
        let y = g.node("Reshape", &[&y, &flat], vec![]);
        let y = g.node(
            "Transpose",
            &[&y],
            vec![("perm", Attr::Ints(vec![0, 2, 1]))],
        );
        let mut t = layer_norm(g, &self.patch_embed.norm, &y)?;
        let mut outs = Vec::with_capacity(self.norms.len());
        for (s, stage) in self.stages.iter().enumerate() {
            let mut mask = None;
            for block in &stage.blocks {
                t = block.emit(g, &t, &hh, &ww, &mut mask)?;
            }
            if let Some(Some(norm)) = self.norms.get(s) {
                let c = norm.gamma.dims()[0] as i64;
                let o = layer_norm(g, norm, &t)?;
                let o = g.node(
                    "Transpose",
                    &[&o],
                    vec![("perm", Attr::Ints(vec![0, 2, 1]))],
                );
                let to = shape_of(g, &[Dim::Fixed(0), Dim::Fixed(c), hh.clone(), ww.clone()]);
                outs.push(g.node("Reshape", &[&o, &to], vec![]));
            }
            if let Some(m) = &stage.downsample {
                t = m.emit(g, &t, &hh, &ww)?;
                let one = Dim::Fixed(1);
                hh = hh.add(g, &one).div(g, 2);
                ww = ww.add(g, &one).div(g, 2);
            }
        }
        Ok(outs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_index_is_the_official_formula() {
        // w = 2: offsets (dy, dx) ∈ {−1, 0, 1}², row (dy+1)·3 + dx+1.
        let idx = relative_position_index(2);
        assert_eq!(
            idx,
            vec![4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4],
            "query (0,0) vs key (1,1) is offset (−1,−1) → 0"
        );
    }

    #[test]
    fn shift_mask_separates_the_rolled_regions_only() {
        // 4×4 map, windows 2, shift 1: the last window row/column mixes regions.
        let (hp, wp, w, s) = (4, 4, 2, 1);
        let m = shift_mask(hp, wp, w, s);
        let n = w * w;
        let win = |wy: usize, wx: usize| &m[(wy * 2 + wx) * n * n..(wy * 2 + wx + 1) * n * n];
        assert!(win(0, 0).iter().all(|&v| v == 0.0), "interior window");
        // window (1,1): tokens (2,2),(2,3),(3,2),(3,3) → regions (1,1),(1,2),(2,1),(2,2): all
        // distinct, so only the diagonal attends.
        let last = win(1, 1);
        for q in 0..n {
            for k in 0..n {
                assert_eq!(last[q * n + k] == 0.0, q == k, "q{q} k{k}");
            }
        }
        // window (0,1): columns 2,3 → regions 1,2 in x, same row region 0.
        let right = win(0, 1);
        assert_eq!(right[1], -100.0, "(0,2) vs (0,3) differ in x region");
        assert_eq!(right[2], 0.0, "(0,2) vs (1,2) share the region");
    }
}
