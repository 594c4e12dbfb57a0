//! Lowering helpers shared by the modules' emitters: parameters as initializers and the
//! standard layers (Linear, Conv2d, LayerNorm, GroupNorm) as opset-17 nodes.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, Linear, PaddingConfig2d};
use burn::tensor::Tensor;

use super::builder::{Attr, GraphBuilder};
use crate::error::{Error, Result};

/// Host copy of a float tensor.
pub fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec()
        .map_err(|e| Error::InvalidArgument {
            what: "export",
            message: format!("cannot read a weight: {e:?}"),
        })
}

/// A parameter as an initializer of the same shape.
pub fn param<const D: usize>(
    g: &mut GraphBuilder,
    hint: &str,
    p: &Param<Tensor<D>>,
) -> Result<String> {
    let t = p.val();
    let dims = t.dims();
    Ok(g.init_f32(hint, &dims, &host(t)?))
}

/// `x @ W + b` over the last axis (Burn's Linear stores W as `[in, out]`, ONNX MatMul's layout).
pub fn linear(g: &mut GraphBuilder, l: &Linear, x: &str) -> Result<String> {
    let w = param(g, "linear_w", &l.weight)?;
    let y = g.node("MatMul", &[x, &w], vec![]);
    match &l.bias {
        Some(b) => {
            let b = param(g, "linear_b", b)?;
            Ok(g.node("Add", &[&y, &b], vec![]))
        }
        None => Ok(y),
    }
}

/// LayerNormalization over the last axis (opset 17), epsilon as Burn's 1e-5.
pub fn layer_norm(g: &mut GraphBuilder, n: &LayerNorm, x: &str) -> Result<String> {
    let gamma = param(g, "ln_g", &n.gamma)?;
    let beta = match &n.beta {
        Some(b) => param(g, "ln_b", b)?,
        None => {
            let d = n.gamma.dims()[0];
            g.init_f32("ln_b", &[d], &vec![0.0; d])
        }
    };
    Ok(g.node(
        "LayerNormalization",
        &[x, &gamma, &beta],
        vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(1e-5))],
    ))
}

/// A Conv2d with explicit padding, weight `[out, in, kh, kw]` (the ONNX layout), optional
/// bias; `fold` multiplies output channel o by `scale[o]` and adds `shift[o]` (a folded
/// frozen BatchNorm).
pub fn conv2d(
    g: &mut GraphBuilder,
    c: &Conv2d,
    x: &str,
    fold: Option<(Vec<f32>, Vec<f32>)>,
) -> Result<String> {
    let w = c.weight.val();
    let [o, i, kh, kw] = w.dims();
    let mut wv = host(w)?;
    let mut bv = match &c.bias {
        Some(b) => host(b.val())?,
        None => vec![0.0; o],
    };
    if let Some((scale, shift)) = fold {
        let per = i * kh * kw;
        for oc in 0..o {
            for v in &mut wv[oc * per..(oc + 1) * per] {
                *v *= scale[oc];
            }
            bv[oc] = bv[oc] * scale[oc] + shift[oc];
        }
    }
    let wn = g.init_f32("conv_w", &[o, i, kh, kw], &wv);
    let bn = g.init_f32("conv_b", &[o], &bv);
    // ONNX pads: [top, left, bottom, right] — Burn's Explicit order.
    let pads = match &c.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => vec![*t as i64, *l as i64, *b as i64, *r as i64],
        PaddingConfig2d::Valid => vec![0, 0, 0, 0],
        _ => {
            return Err(Error::InvalidArgument {
                what: "export",
                message: "only explicit or valid conv padding is exported".into(),
            });
        }
    };
    Ok(g.node(
        "Conv",
        &[x, &wn, &bn],
        vec![
            ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
            (
                "strides",
                Attr::Ints(c.stride.iter().map(|&s| s as i64).collect()),
            ),
            (
                "dilations",
                Attr::Ints(c.dilation.iter().map(|&s| s as i64).collect()),
            ),
            ("pads", Attr::Ints(pads)),
            ("group", Attr::Int(c.groups as i64)),
        ],
    ))
}

/// GroupNorm over `[N, C, H, W]` without opset 18's GroupNormalization: reshape to
/// `[N, G, C/G·H·W]`, InstanceNormalization (unit scale, zero bias), reshape back, then the
/// per-channel affine `gamma`, `beta` (`[C]`).
pub fn group_norm_raw(
    g: &mut GraphBuilder,
    x: &str,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
) -> Result<String> {
    let c = gamma.len();
    let to_groups = g.ints(&[0, groups as i64, -1]);
    let r = g.node("Reshape", &[x, &to_groups], vec![]);
    let ones = g.init_f32("gn_one", &[groups], &vec![1.0; groups]);
    let zeros = g.init_f32("gn_zero", &[groups], &vec![0.0; groups]);
    let normed = g.node(
        "InstanceNormalization",
        &[&r, &ones, &zeros],
        vec![("epsilon", Attr::Float(epsilon as f32))],
    );
    let shape = g.node("Shape", &[x], vec![]);
    let back = g.node("Reshape", &[&normed, &shape], vec![]);
    let gm = g.init_f32("gn_g", &[1, c, 1, 1], gamma);
    let bt = g.init_f32("gn_b", &[1, c, 1, 1], beta);
    let y = g.node("Mul", &[&back, &gm], vec![]);
    Ok(g.node("Add", &[&y, &bt], vec![]))
}

/// A Burn GroupNorm, lowered with [`group_norm_raw`].
pub fn group_norm(g: &mut GraphBuilder, n: &GroupNorm, x: &str) -> Result<String> {
    let c = n.num_channels;
    let (gamma, beta) = match (&n.gamma, &n.beta, n.affine) {
        (Some(gm), Some(bt), true) => (host(gm.val())?, host(bt.val())?),
        _ => (vec![1.0; c], vec![0.0; c]),
    };
    group_norm_raw(g, x, n.num_groups, &gamma, &beta, n.epsilon)
}
