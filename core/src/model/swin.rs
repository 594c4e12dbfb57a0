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
        let mut stages = Vec::with_capacity(4);
        for (s, &c) in ch.iter().enumerate() {
            let blocks = (0..self.depths[s])
                .map(|j| {
                    SwinBlock::new(
                        c,
                        self.num_heads[s],
                        self.window_size,
                        if j % 2 == 1 { self.window_size / 2 } else { 0 },
                        c * self.mlp_ratio,
                        device,
                    )
                })
                .collect();
            // The last stage merges nothing; neither does one past the last returned map
            // (its merge would feed a stage that is never run).
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
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
        .init(device)
        .map_bias_zero(device)
}

trait ZeroBias {
    fn map_bias_zero(self, device: &Device) -> Self;
}

impl ZeroBias for Linear {
    fn map_bias_zero(mut self, device: &Device) -> Self {
        if let Some(b) = &self.bias {
            let d = b.dims()[0];
            self.bias = Some(Param::from_tensor(Tensor::zeros([d], device)));
        }
        self
    }
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
        table
            .select(0, idx)
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
        }
    }

    /// `x`: `[B, H·W, C]` tokens of an `[h, w]` map → same shape.
    pub fn forward(&self, x: Tensor<3>, [h, w]: [usize; 2]) -> Tensor<3> {
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
            let nw = (hp / ws) * (wp / ws);
            Tensor::<3>::from_data(
                TensorData::new(shift_mask(hp, wp, ws, s), [nw, ws * ws, ws * ws]),
                &x.device(),
            )
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
        let x = x + y;
        let f = ac::linear(
            &self.fc2,
            gelu(ac::linear(&self.fc1, self.norm2.forward(x.clone()))),
        );
        x + f
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
            for block in &stage.blocks {
                t = block.forward(t, [hh, ww]);
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

/// `axis` of `x` rolled by `shift` (positive: towards the end), as two Slices and a Concat.
fn emit_roll(g: &mut GraphBuilder, x: &str, axis: i64, n: usize, shift: i64) -> String {
    let cut = (n as i64 - shift).rem_euclid(n as i64);
    let ax = g.ints(&[axis]);
    let (z, c, e) = (g.ints(&[0]), g.ints(&[cut]), g.ints(&[n as i64]));
    let tail = g.node("Slice", &[x, &c, &e, &ax], vec![]);
    let head = g.node("Slice", &[x, &z, &c, &ax], vec![]);
    g.node("Concat", &[&tail, &head], vec![("axis", Attr::Int(axis))])
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

/// Right/bottom zero padding of `[B, H, W, C]`.
fn emit_pad_hw(g: &mut GraphBuilder, x: &str, pb: usize, pr: usize) -> String {
    if pb + pr == 0 {
        return x.to_string();
    }
    let pads = g.ints(&[0, 0, 0, 0, 0, pb as i64, pr as i64, 0]);
    g.node("Pad", &[x, &pads], vec![])
}

impl WindowAttention {
    /// ONNX emitter of [`WindowAttention::forward`]; `mask`: an initializer `[nW, 1, w², w²]`
    /// and its `nW`.
    pub fn emit(
        &self,
        g: &mut GraphBuilder,
        x: &str,
        mask: Option<(&str, usize)>,
    ) -> Result<String> {
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
            let to5 = g.ints(&[-1, nw as i64, h as i64, n as i64, n as i64]);
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
    /// ONNX emitter of [`SwinBlock::forward`] at a known map size: `x` `[B, h·w, C]`.
    pub fn emit(&self, g: &mut GraphBuilder, x: &str, [h, w]: [usize; 2]) -> Result<String> {
        use crate::onnx::emit::{layer_norm, linear as lin};
        let c = self.norm1.gamma.dims()[0] as i64;
        let ws = self.attn.window;
        let (pb, pr) = (pad_to(h, ws), pad_to(w, ws));
        let (hp, wp) = (h + pb, w + pr);
        let s = self.shift as i64;
        let y = layer_norm(g, &self.norm1, x)?;
        let to_map = g.ints(&[-1, h as i64, w as i64, c]);
        let y = g.node("Reshape", &[&y, &to_map], vec![]);
        let mut y = emit_pad_hw(g, &y, pb, pr);
        if s > 0 {
            y = emit_roll(g, &y, 1, hp, -s);
            y = emit_roll(g, &y, 2, wp, -s);
        }
        let (nh, nw, wsi) = ((hp / ws) as i64, (wp / ws) as i64, ws as i64);
        let part = g.ints(&[-1, nh, wsi, nw, wsi, c]);
        let y = g.node("Reshape", &[&y, &part], vec![]);
        let y = g.node(
            "Transpose",
            &[&y],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2, 4, 5]))],
        );
        let flat = g.ints(&[-1, wsi * wsi, c]);
        let windows = g.node("Reshape", &[&y, &flat], vec![]);
        let nwin = (hp / ws) * (wp / ws);
        let mask = (s > 0).then(|| {
            let n = ws * ws;
            g.init_f32(
                "shift_mask",
                &[nwin, 1, n, n],
                &shift_mask(hp, wp, ws, self.shift),
            )
        });
        let y = self
            .attn
            .emit(g, &windows, mask.as_deref().map(|m| (m, nwin)))?;
        let unpart = g.ints(&[-1, nh, nw, wsi, wsi, c]);
        let y = g.node("Reshape", &[&y, &unpart], vec![]);
        let y = g.node(
            "Transpose",
            &[&y],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2, 4, 5]))],
        );
        let to_pad = g.ints(&[-1, hp as i64, wp as i64, c]);
        let mut y = g.node("Reshape", &[&y, &to_pad], vec![]);
        if s > 0 {
            y = emit_roll(g, &y, 1, hp, s);
            y = emit_roll(g, &y, 2, wp, s);
        }
        if pb + pr > 0 {
            let (st, en, ax) = (
                g.ints(&[0, 0]),
                g.ints(&[h as i64, w as i64]),
                g.ints(&[1, 2]),
            );
            y = g.node("Slice", &[&y, &st, &en, &ax], vec![]);
        }
        let to_tokens = g.ints(&[-1, (h * w) as i64, c]);
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
    /// ONNX emitter of [`PatchMerging::forward`] at a known map size.
    pub fn emit(&self, g: &mut GraphBuilder, x: &str, [h, w]: [usize; 2]) -> Result<String> {
        use crate::onnx::emit::{layer_norm, linear as lin};
        let c = self.norm.gamma.dims()[0] as i64 / 4;
        let (pb, pr) = (h % 2, w % 2);
        let to_map = g.ints(&[-1, h as i64, w as i64, c]);
        let y = g.node("Reshape", &[x, &to_map], vec![]);
        let y = emit_pad_hw(g, &y, pb, pr);
        let (h2, w2) = (((h + pb) / 2) as i64, ((w + pr) / 2) as i64);
        let split = g.ints(&[-1, h2, 2, w2, 2, c]);
        let y = g.node("Reshape", &[&y, &split], vec![]);
        let y = g.node(
            "Transpose",
            &[&y],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 5, 2, 4]))],
        );
        let flat = g.ints(&[-1, h2 * w2, 4 * c]);
        let y = g.node("Reshape", &[&y, &flat], vec![]);
        let y = layer_norm(g, &self.norm, &y)?;
        lin(g, &self.reduction, &y)
    }
}

impl SwinTransformer {
    /// ONNX emitter of [`SwinTransformer::forward`]: `x` normalised NCHW of the fixed input
    /// size `[h, w]` → the selected maps (NCHW).
    pub fn emit(&self, g: &mut GraphBuilder, x: &str, [h, w]: [usize; 2]) -> Result<Vec<String>> {
        use crate::onnx::emit::{conv2d, layer_norm};
        let x = if pad_to(h, PATCH) + pad_to(w, PATCH) > 0 {
            let pads = g.ints(&[
                0,
                0,
                0,
                0,
                0,
                0,
                pad_to(h, PATCH) as i64,
                pad_to(w, PATCH) as i64,
            ]);
            g.node("Pad", &[x, &pads], vec![])
        } else {
            x.to_string()
        };
        let y = conv2d(g, &self.patch_embed.proj, &x, None)?;
        let c0 = self.patch_embed.norm.gamma.dims()[0] as i64;
        let (mut hh, mut ww) = (h.div_ceil(PATCH), w.div_ceil(PATCH));
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
            for block in &stage.blocks {
                t = block.emit(g, &t, [hh, ww])?;
            }
            if let Some(Some(norm)) = self.norms.get(s) {
                let c = norm.gamma.dims()[0] as i64;
                let o = layer_norm(g, norm, &t)?;
                let o = g.node(
                    "Transpose",
                    &[&o],
                    vec![("perm", Attr::Ints(vec![0, 2, 1]))],
                );
                let to = g.ints(&[0, c, hh as i64, ww as i64]);
                outs.push(g.node("Reshape", &[&o, &to], vec![]));
            }
            if let Some(m) = &stage.downsample {
                t = m.emit(g, &t, [hh, ww])?;
                (hh, ww) = (hh.div_ceil(2), ww.div_ceil(2));
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
