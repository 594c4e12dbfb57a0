//! DINO decoder: post-norm layers of self-attention, cross-MSDA on box references and FFN,
//! with iterative box refinement and query positions from the boxes' sine embedding.

use crate::model::autocast as ac;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::encoder::{Ffn, xavier_linear};
use super::msda::{MsDeformAttn, MsDeformAttnConfig, Reference};
use super::padding::Padding;
use crate::Result;

/// `log(x / (1 − x))` with both clamped to `eps` (DINO's eps = 1e-3).
pub fn inverse_sigmoid<const D: usize>(x: Tensor<D>, eps: f64) -> Tensor<D> {
    let x = x.clamp(0.0, 1.0);
    let a = x.clone().clamp_min(eps);
    let b = (x.neg() + 1.0).clamp_min(eps);
    (a / b).log()
}

/// Per-coordinate sine features of normalised boxes `[B, Q, 4]` → `[B, Q, 4, nf]`: each value
/// × 2π over temperature-10000 frequencies, sin on even and cos on odd channels.
pub fn box_sine_parts(boxes: Tensor<3>, nf: usize) -> Tensor<4> {
    let device = boxes.device();
    let [b, q, _] = boxes.dims();
    let inv: Vec<f32> = (0..nf)
        .map(|i| (1.0 / 10000f64.powf(2.0 * (i / 2) as f64 / nf as f64)) as f32)
        .collect();
    let inv = Tensor::<1>::from_data(TensorData::new(inv, [nf]), &device).reshape([1, 1, 1, nf]);
    let even: Vec<f32> = (0..nf)
        .map(|i| if i % 2 == 0 { 1.0 } else { 0.0 })
        .collect();
    let even = Tensor::<1>::from_data(TensorData::new(even, [nf]), &device).reshape([1, 1, 1, nf]);
    let arg = boxes.reshape([b, q, 4, 1]) * std::f64::consts::TAU * inv;
    arg.clone().sin() * even.clone() + arg.cos() * (even.neg() + 1.0)
}

/// Sine embedding of normalised boxes `[B, Q, 4]` (cx, cy, w, h) → `[B, Q, 4·nf]`, ordered
/// (y, x, w, h) like mmdet's `coordinate_to_encoding` (the DINO query position).
pub fn box_sine_embedding(boxes: Tensor<3>, nf: usize) -> Tensor<3> {
    let [b, q, _] = boxes.dims();
    let emb = box_sine_parts(boxes, nf);
    let parts = [1usize, 0, 2, 3].map(|i| emb.clone().narrow(2, i, 1));
    Tensor::cat(parts.to_vec(), 2).reshape([b, q, 4 * nf])
}

/// Multi-head self-attention with separate q/k/v/out projections (like
/// `torch.nn.MultiheadAttention`).
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
}

impl SelfAttention {
    pub fn new(d: usize, num_heads: usize, device: &Device) -> Self {
        Self {
            q_proj: xavier_linear(d, d, device),
            k_proj: xavier_linear(d, d, device),
            v_proj: xavier_linear(d, d, device),
            out_proj: xavier_linear(d, d, device),
            num_heads,
        }
    }

    /// - `qk`: `[B, Q, d]` input of queries and keys (content + position)
    /// - `v`: `[B, Q, d]` input of values (content)
    /// - `mask`: `[Q, Q]`, true where query i may NOT attend to key j
    pub fn forward(
        &self,
        qk: Tensor<3>,
        v: Tensor<3>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let [b, q, d] = qk.dims();
        let h = self.num_heads;
        let dh = d / h;
        let split = |x: Tensor<3>| x.reshape([b, q, h, dh]).swap_dims(1, 2); // [B, H, Q, dh]
        let qh = split(ac::linear(&self.q_proj, qk.clone())) * (1.0 / (dh as f64).sqrt());
        let kh = split(ac::linear(&self.k_proj, qk));
        let vh = split(ac::linear(&self.v_proj, v));
        let mut scores = ac::matmul(qh, kh.swap_dims(2, 3)); // [B, H, Q, Q]
        if let Some(m) = mask {
            // A large finite negative keeps fully-masked rows NaN-free.
            scores = scores.mask_fill(m.clone().reshape([1, 1, q, q]).expand([b, h, q, q]), -1e9);
        }
        let out = ac::matmul(softmax(scores, 3), vh)
            .swap_dims(1, 2)
            .reshape([b, q, d]);
        ac::linear(&self.out_proj, out)
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: SelfAttention,
    pub norm1: LayerNorm,
    pub cross_attn: MsDeformAttn,
    pub norm2: LayerNorm,
    pub ffn: Ffn,
}

impl DecoderLayer {
    /// - `x`: `[B, Q, d]` content queries; `pos`: `[B, Q, d]` their positions
    /// - `boxes`: reference boxes (normalised cxcywh), `[B, Q, 4]` or per level `[B, Q, L, 4]`
    /// - `memory`: `[B, S, d]` encoder output; `value_mask` `[B, S, 1]` 0.0 where padded
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: Tensor<3>,
        pos: Tensor<3>,
        boxes: &Reference,
        memory: Tensor<3>,
        shapes: &[[usize; 2]],
        mask: Option<&Tensor<2, Bool>>,
        value_mask: Option<&Tensor<3>>,
    ) -> Tensor<3> {
        let sa = self
            .self_attn
            .forward(x.clone() + pos.clone(), x.clone(), mask);
        let x = self.norm1.forward(x + sa);
        let ca = self
            .cross_attn
            .forward(x.clone() + pos, boxes, memory, shapes, value_mask);
        let x = self.norm2.forward(x + ca);
        self.ffn.forward(x)
    }
}

/// Box regression branch: 3-layer MLP `d → d → d → 4` (ReLU between).
#[derive(Module, Debug)]
pub struct BoxHead {
    pub layers: Vec<Linear>,
}

impl BoxHead {
    /// The last layer starts at zero so the first refinement keeps the reference box.
    pub fn new(d: usize, device: &Device) -> Self {
        let mut last = xavier_linear(d, 4, device);
        last.weight = burn::module::Param::from_tensor(Tensor::zeros([d, 4], device));
        Self {
            layers: vec![
                xavier_linear(d, d, device),
                xavier_linear(d, d, device),
                last,
            ],
        }
    }

    /// `[B, N, d]` → `[B, N, 4]` (unnormalised: added to the reference's inverse sigmoid).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let n = self.layers.len();
        let mut x = x;
        for (i, l) in self.layers.iter().enumerate() {
            x = ac::linear(l, x);
            if i + 1 < n {
                x = relu(x);
            }
        }
        x
    }
}

/// Per-layer outputs of the decoder.
pub struct DecoderOutput {
    /// `L × [B, Q, d]`, each after the decoder's final LayerNorm.
    pub hidden: Vec<Tensor<3>>,
    /// `L + 1` references `[B, Q, 4]`: the initial one, then each layer's refined boxes (not
    /// detached: the head decodes layer l against `references[l]`, "look forward twice").
    pub references: Vec<Tensor<3>>,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub layers: Vec<DecoderLayer>,
    /// `4·(d/2) → d → d` MLP from the box sine embedding to the query position.
    pub ref_point_head: Vec<Linear>,
    pub norm: LayerNorm,
}

impl Decoder {
    pub fn new(
        attn: &MsDeformAttnConfig,
        ffn_dim: usize,
        num_layers: usize,
        device: &Device,
    ) -> Result<Self> {
        let d = attn.d_model;
        let layers = (0..num_layers)
            .map(|_| {
                Ok(DecoderLayer {
                    self_attn: SelfAttention::new(d, attn.num_heads, device),
                    norm1: LayerNormConfig::new(d).init(device),
                    cross_attn: attn.init(device)?,
                    norm2: LayerNormConfig::new(d).init(device),
                    ffn: Ffn::new(d, ffn_dim, device),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            ref_point_head: vec![xavier_linear(2 * d, d, device), xavier_linear(d, d, device)],
            norm: LayerNormConfig::new(d).init(device),
        })
    }

    /// Query position of boxes `[B, Q, 4]` → `[B, Q, d]`.
    pub fn query_pos(&self, boxes: Tensor<3>) -> Tensor<3> {
        let d = self.norm.gamma.dims()[0];
        let e = box_sine_embedding(boxes, d / 2);
        ac::linear(
            &self.ref_point_head[1],
            relu(ac::linear(&self.ref_point_head[0], e)),
        )
    }

    /// - `x`: `[B, Q, d]` initial content queries
    /// - `reference`: `[B, Q, 4]` initial boxes (sigmoid space)
    /// - `box_heads`: one per layer, used for the refinement
    /// - `padding`: in a padded batch each level sees the boxes scaled by its valid ratio,
    ///   the query position comes from level 0's scaled box, and padded tokens give no values
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: Tensor<3>,
        reference: Tensor<3>,
        memory: Tensor<3>,
        shapes: &[[usize; 2]],
        mask: Option<&Tensor<2, Bool>>,
        box_heads: &[BoxHead],
        padding: Option<&Padding>,
    ) -> DecoderOutput {
        let mut hidden = Vec::with_capacity(self.layers.len());
        let mut references = vec![reference.clone()];
        let mut x = x;
        let mut reference = reference;
        let device = memory.device();
        // [B, 1, L, 4]: (w, h, w, h) ratios per level
        let ratios = padding.map(|p| {
            let r = p.ratios(&device);
            let [b, l, _] = r.dims();
            Tensor::cat(vec![r.clone(), r], 2).reshape([b, 1, l, 4])
        });
        let value_mask = padding.map(|p| p.tokens(&device));
        for (layer, head) in self.layers.iter().zip(box_heads) {
            let (pos, boxes) = match &ratios {
                Some(r) => {
                    let [b, q, _] = reference.dims();
                    let scaled = reference.clone().reshape([b, q, 1, 4]) * r.clone();
                    let level0 = scaled.clone().narrow(2, 0, 1).reshape([b, q, 4]);
                    (self.query_pos(level0), Reference::LevelBoxes(scaled))
                }
                None => (
                    self.query_pos(reference.clone()),
                    Reference::Boxes(reference.clone()),
                ),
            };
            x = layer.forward(
                x,
                pos,
                &boxes,
                memory.clone(),
                shapes,
                mask,
                value_mask.as_ref(),
            );
            let refined = sigmoid(head.forward(x.clone()) + inverse_sigmoid(reference, 1e-3));
            references.push(refined.clone());
            reference = refined.detach();
            hidden.push(self.norm.forward(x.clone()));
        }
        DecoderOutput { hidden, references }
    }
}

/// ONNX emitter of [`inverse_sigmoid`] with DINO's eps.
pub fn emit_inverse_sigmoid(g: &mut crate::onnx::GraphBuilder, x: &str, eps: f32) -> String {
    let (zero, one, e) = (g.scalar(0.0), g.scalar(1.0), g.scalar(eps));
    let c = g.node("Clip", &[x, &zero, &one], vec![]);
    let a = g.node("Max", &[&c, &e], vec![]);
    let om = g.node("Sub", &[&one, &c], vec![]);
    let b = g.node("Max", &[&om, &e], vec![]);
    let r = g.node("Div", &[&a, &b], vec![]);
    g.node("Log", &[&r], vec![])
}

/// ONNX emitter of [`box_sine_embedding`]: `[N, Q, 4]` → `[N, Q, 4·nf]` ordered (y, x, w, h).
pub fn emit_box_sine_embedding(
    g: &mut crate::onnx::GraphBuilder,
    boxes: &str,
    nf: usize,
) -> String {
    use crate::onnx::builder::Attr;
    let freq: Vec<f32> = (0..nf)
        .map(|i| (std::f64::consts::TAU / 10000f64.powf(2.0 * (i / 2) as f64 / nf as f64)) as f32)
        .collect();
    let even: Vec<f32> = (0..nf)
        .map(|i| if i % 2 == 0 { 1.0 } else { 0.0 })
        .collect();
    let odd: Vec<f32> = even.iter().map(|e| 1.0 - e).collect();
    let freq = g.init_f32("sine_freq", &[1, 1, 1, nf], &freq);
    let even = g.init_f32("sine_even", &[1, 1, 1, nf], &even);
    let odd = g.init_f32("sine_odd", &[1, 1, 1, nf], &odd);
    let ax = g.ints(&[3]);
    let u = g.node("Unsqueeze", &[boxes, &ax], vec![]);
    let arg = g.node("Mul", &[&u, &freq], vec![]);
    let s = g.node("Sin", &[&arg], vec![]);
    let c = g.node("Cos", &[&arg], vec![]);
    let s = g.node("Mul", &[&s, &even], vec![]);
    let c = g.node("Mul", &[&c, &odd], vec![]);
    let e = g.node("Add", &[&s, &c], vec![]);
    let order = g.ints(&[1, 0, 2, 3]);
    let e = g.node("Gather", &[&e, &order], vec![("axis", Attr::Int(2))]);
    let shape = g.ints(&[0, 0, (4 * nf) as i64]);
    g.node("Reshape", &[&e, &shape], vec![])
}

impl SelfAttention {
    /// ONNX emitter of [`SelfAttention::forward`] without a mask (inference).
    pub fn emit(&self, g: &mut crate::onnx::GraphBuilder, qk: &str, v: &str) -> Result<String> {
        use crate::onnx::builder::Attr;
        use crate::onnx::emit::linear;
        let d = self.q_proj.weight.dims()[1] as i64;
        let h = self.num_heads as i64;
        let dh = d / h;
        let split = g.ints(&[0, 0, h, dh]);
        let heads = |g: &mut crate::onnx::GraphBuilder, x: &str| {
            let r = g.node("Reshape", &[x, &split], vec![]);
            g.node(
                "Transpose",
                &[&r],
                vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
            )
        };
        let q = linear(g, &self.q_proj, qk)?;
        let scale = g.scalar(1.0 / (dh as f32).sqrt());
        let q = g.node("Mul", &[&q, &scale], vec![]);
        let q = heads(g, &q);
        let k = linear(g, &self.k_proj, qk)?;
        let k = heads(g, &k);
        let vv = linear(g, &self.v_proj, v)?;
        let vv = heads(g, &vv);
        let kt = g.node(
            "Transpose",
            &[&k],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
        );
        let sc = g.node("MatMul", &[&q, &kt], vec![]);
        let p = g.node("Softmax", &[&sc], vec![("axis", Attr::Int(-1))]);
        let o = g.node("MatMul", &[&p, &vv], vec![]);
        let o = g.node(
            "Transpose",
            &[&o],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let merge = g.ints(&[0, 0, d]);
        let o = g.node("Reshape", &[&o, &merge], vec![]);
        linear(g, &self.out_proj, &o)
    }
}

impl BoxHead {
    /// ONNX emitter of [`BoxHead::forward`].
    pub fn emit(&self, g: &mut crate::onnx::GraphBuilder, x: &str) -> Result<String> {
        let n = self.layers.len();
        let mut x = x.to_string();
        for (i, l) in self.layers.iter().enumerate() {
            x = crate::onnx::emit::linear(g, l, &x)?;
            if i + 1 < n {
                x = g.node("Relu", &[&x], vec![]);
            }
        }
        Ok(x)
    }
}

impl Decoder {
    /// ONNX emitter of [`Decoder::forward`] at inference (no mask): returns the final layer's
    /// normed output and the reference it decodes against (look forward twice).
    #[allow(clippy::too_many_arguments)]
    pub fn emit(
        &self,
        g: &mut crate::onnx::GraphBuilder,
        x: &str,
        reference: &str,
        memory: &str,
        levels: &crate::onnx::Levels,
        box_heads: &[BoxHead],
        lowering: codetr_model::Msda,
        padding: Option<&super::padding::EmitPadding>,
    ) -> Result<(String, String)> {
        use super::msda::EmitReference;
        use crate::onnx::emit::{layer_norm, linear};
        let d = self.norm.gamma.dims()[0];
        let mut x = x.to_string();
        let mut reference = reference.to_string();
        let mut last_in = reference.clone();
        // (only a padded graph gets these constants: a stretch graph stays byte-identical)
        let axes = padding.map(|_| (g.ints(&[2]), g.ints(&[0]), g.ints(&[1])));
        for (layer, head) in self.layers.iter().zip(box_heads) {
            // a padded batch: per-level boxes × valid ratios, the position from level 0's
            let scaled = padding.zip(axes.as_ref()).map(|(p, (ax2, s0, s1))| {
                let r = g.node("Unsqueeze", &[&reference, ax2], vec![]); // [N, Q, 1, 4]
                let scaled = g.node("Mul", &[&r, &p.ratios4], vec![]); // [N, Q, L, 4]
                let l0 = g.node("Slice", &[&scaled, s0, s1, ax2], vec![]);
                let l0 = g.node("Squeeze", &[&l0, ax2], vec![]);
                (scaled, l0)
            });
            let pos_src = scaled
                .as_ref()
                .map_or(reference.as_str(), |(_, l0)| l0.as_str());
            let e = emit_box_sine_embedding(g, pos_src, d / 2);
            let p = linear(g, &self.ref_point_head[0], &e)?;
            let p = g.node("Relu", &[&p], vec![]);
            let pos = linear(g, &self.ref_point_head[1], &p)?;
            let qk = g.node("Add", &[&x, &pos], vec![]);
            let sa = layer.self_attn.emit(g, &qk, &x)?;
            let s = g.node("Add", &[&x, &sa], vec![]);
            let h = layer_norm(g, &layer.norm1, &s)?;
            let q = g.node("Add", &[&h, &pos], vec![]);
            let boxes = match &scaled {
                Some((s, _)) => EmitReference::LevelBoxes(s),
                None => EmitReference::Boxes(&reference),
            };
            let ca = layer.cross_attn.emit(
                g,
                &q,
                boxes,
                memory,
                levels,
                lowering,
                padding.map(|p| p.tokens.as_str()),
            )?;
            let s = g.node("Add", &[&h, &ca], vec![]);
            let h = layer_norm(g, &layer.norm2, &s)?;
            x = layer.ffn.emit(g, &h)?;
            let delta = head.emit(g, &x)?;
            let inv = emit_inverse_sigmoid(g, &reference, 1e-3);
            let t = g.node("Add", &[&delta, &inv], vec![]);
            last_in = reference;
            reference = g.node("Sigmoid", &[&t], vec![]);
        }
        let hidden = layer_norm(g, &self.norm, &x)?;
        Ok((hidden, last_in))
    }
}
