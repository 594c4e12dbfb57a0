//! Deformable transformer encoder: post-norm layers of self-MSDA + FFN over all levels.

use crate::model::autocast as ac;
use burn::module::Module;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use super::msda::{MsDeformAttn, MsDeformAttnConfig, Reference};
use super::padding::Padding;
use crate::Result;

/// A Linear with Xavier-uniform weights and zero bias (the DETR family's initialisation).
pub fn xavier_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    let mut l = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::XavierUniform { gain: 1.0 })
        .init(device);
    l.bias = Some(burn::module::Param::from_tensor(Tensor::zeros(
        [d_out],
        device,
    )));
    l
}

/// Position-wise feed-forward block with residual and post-norm:
/// `norm(x + W2 relu(W1 x))`.
#[derive(Module, Debug)]
pub struct Ffn {
    /// `d → ffn_dim`
    pub linear1: Linear,
    /// `ffn_dim → d`
    pub linear2: Linear,
    pub norm: LayerNorm,
}

impl Ffn {
    pub fn new(d: usize, ffn_dim: usize, device: &Device) -> Self {
        Self {
            linear1: xavier_linear(d, ffn_dim, device),
            linear2: xavier_linear(ffn_dim, d, device),
            norm: LayerNormConfig::new(d).init(device),
        }
    }

    /// `[B, N, d]` → `[B, N, d]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let y = ac::linear(&self.linear2, relu(ac::linear(&self.linear1, x.clone())));
        self.norm.forward(x + y)
    }
}

impl Ffn {
    /// ONNX emitter of [`Ffn::forward`].
    pub fn emit(&self, g: &mut crate::onnx::GraphBuilder, x: &str) -> Result<String> {
        use crate::onnx::emit::{layer_norm, linear};
        let h = linear(g, &self.linear1, x)?;
        let h = g.node("Relu", &[&h], vec![]);
        let y = linear(g, &self.linear2, &h)?;
        let s = g.node("Add", &[x, &y], vec![]);
        layer_norm(g, &self.norm, &s)
    }
}

#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub self_attn: MsDeformAttn,
    pub norm1: LayerNorm,
    pub ffn: Ffn,
}

impl EncoderLayer {
    /// - `src`: `[B, S, d]` tokens of all levels
    /// - `pos`: `[B, S, d]` position + level embedding
    /// - `reference`: token centres, `[B, S, 2]` or per level `[B, S, L, 2]`
    /// - `value_mask`: `[B, S, 1]`, 0.0 for padded tokens
    pub fn forward(
        &self,
        src: Tensor<3>,
        pos: Tensor<3>,
        reference: &Reference,
        shapes: &[[usize; 2]],
        value_mask: Option<&Tensor<3>>,
    ) -> Tensor<3> {
        let attn = self.self_attn.forward(
            src.clone() + pos,
            reference,
            src.clone(),
            shapes,
            value_mask,
        );
        let x = self.norm1.forward(src + attn);
        self.ffn.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(
        attn: &MsDeformAttnConfig,
        ffn_dim: usize,
        num_layers: usize,
        device: &Device,
    ) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|_| {
                Ok(EncoderLayer {
                    self_attn: attn.init(device)?,
                    norm1: LayerNormConfig::new(attn.d_model).init(device),
                    ffn: Ffn::new(attn.d_model, ffn_dim, device),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// `[B, S, d]` tokens + positions → encoder memory `[B, S, d]`. With `padding`, the
    /// reference points are per level and padded tokens give no values.
    pub fn forward(
        &self,
        src: Tensor<3>,
        pos: Tensor<3>,
        shapes: &[[usize; 2]],
        padding: Option<&Padding>,
    ) -> Tensor<3> {
        let b = src.dims()[0];
        let device = src.device();
        let (reference, mask) = match padding {
            Some(p) => (
                Reference::LevelPoints(p.centres(&device)),
                Some(p.tokens(&device)),
            ),
            None => (
                Reference::Points(token_centres(shapes, &device).expand([
                    b,
                    shapes.iter().map(|[h, w]| h * w).sum::<usize>(),
                    2,
                ])),
                None,
            ),
        };
        let mut x = src;
        for layer in &self.layers {
            x = layer.forward(x, pos.clone(), &reference, shapes, mask.as_ref());
        }
        x
    }
}

impl Encoder {
    /// ONNX emitter of [`Encoder::forward`]: `src` `[N, S, d]`, `pos` `[1, S, d]` (or
    /// `[N, S, d]` in a padded batch, whose `padding` gives the per-level references and the
    /// value mask).
    pub fn emit(
        &self,
        g: &mut crate::onnx::GraphBuilder,
        src: &str,
        pos: &str,
        levels: &crate::onnx::Levels,
        lowering: codetr_model::Msda,
        padding: Option<&super::padding::EmitPadding>,
    ) -> Result<String> {
        use super::msda::EmitReference;
        let centres = match padding {
            Some(p) => p.centres.clone(),
            None => emit_token_centres(g, levels)?,
        };
        let mut x = src.to_string();
        for layer in &self.layers {
            let q = g.node("Add", &[&x, pos], vec![]);
            let reference = match padding {
                Some(_) => EmitReference::LevelPoints(&centres),
                None => EmitReference::Points(&centres),
            };
            let attn = layer.self_attn.emit(
                g,
                &q,
                reference,
                &x,
                levels,
                lowering,
                padding.map(|p| p.tokens.as_str()),
            )?;
            let s = g.node("Add", &[&x, &attn], vec![]);
            let h = crate::onnx::emit::layer_norm(g, &layer.norm1, &s)?;
            x = layer.ffn.emit(g, &h)?;
        }
        Ok(x)
    }
}

/// ONNX emitter of [`token_centres`]: a constant at a fixed input size, else computed from
/// the run-time level sizes (kept fp32 in an fp16 export).
pub fn emit_token_centres(
    g: &mut crate::onnx::GraphBuilder,
    levels: &crate::onnx::Levels,
) -> Result<String> {
    if let Some(shapes) = &levels.fixed {
        let centres = token_centres(shapes, &burn::tensor::Device::flex());
        let dims = centres.dims();
        return Ok(g.init_f32("centres", &dims, &crate::onnx::emit::host(centres)?));
    }
    g.begin_fp32();
    let per: Vec<String> = levels.levels.iter().map(|l| l.centres(g)).collect();
    let out = crate::onnx::Levels::concat_tokens(g, &per);
    g.end_fp32();
    Ok(out)
}

/// Centre `((x + 0.5)/w, (y + 0.5)/h)` of every token of every level, `[1, S, 2]`.
pub fn token_centres(shapes: &[[usize; 2]], device: &Device) -> Tensor<3> {
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let mut v = Vec::with_capacity(s * 2);
    for &[h, w] in shapes {
        for y in 0..h {
            for x in 0..w {
                v.push((x as f32 + 0.5) / w as f32);
                v.push((y as f32 + 0.5) / h as f32);
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [1, s, 2]), device)
}
