//! The optimizer step of DETR training, with what Burn does not give: a GLOBAL grad-norm clip
//! (Burn clips per tensor) and a lower learning rate for the backbone (Co-DINO: ×0.1).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Gradients, Tensor};

/// AdamW as PyTorch/the official config: eps 1e-8 (Burn's default is 1e-5), decoupled decay.
pub fn adamw(weight_decay: f64) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay as f32)
        .init()
}

/// Each gradient's sum of squares, left on its device (`[1]` each).
struct SqNorm<'a> {
    grads: &'a GradientsParams,
    sums: Vec<Tensor<1>>,
}

impl ModuleVisitor for SqNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.sums.push(g.powf_scalar(2.0).sum());
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// L2 norm over every gradient in `groups` (all of `module`'s parameters). One read-back for
/// all tensors (on a GPU each read-back is a sync: one per parameter tensor was hundreds per
/// step); the per-tensor sums are added in f64 on the host, in parameter order.
pub fn global_grad_norm<M: Module>(module: &M, groups: &[&GradientsParams]) -> f64 {
    let mut sums = Vec::new();
    let mut counts = Vec::with_capacity(groups.len());
    for g in groups {
        let mut v = SqNorm {
            grads: g,
            sums: Vec::new(),
        };
        module.visit(&mut v);
        counts.push(v.sums.len());
        sums.extend(v.sums);
    }
    if sums.is_empty() {
        return 0.0;
    }
    let sums: Vec<f32> =
        crate::host::read_f32(Tensor::cat(sums, 0), "gradient norms").unwrap_or_default();
    // Per group, then over groups: the order the sums were always added in.
    let mut total = 0.0;
    let mut rest = sums.as_slice();
    for n in counts {
        let (group, tail) = rest.split_at(n.min(rest.len()));
        total += group.iter().fold(0.0, |acc, &s| acc + f64::from(s));
        rest = tail;
    }
    total.sqrt()
}

/// The factor `torch.nn.utils.clip_grad_norm_` multiplies the gradients by, given their global
/// norm ([`global_grad_norm`]): `max_norm / (norm + 1e-6)` above `max_norm`, else 1 (also when
/// clipping is off, `max_norm` = 0). `fit` folds the f16 loss-scale's unscaling into it and
/// applies both with one [`scale_grads`].
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Multiplies every gradient of `module` in `groups` by `factor`; 1 leaves them untouched.
pub fn scale_grads<M: Module>(module: &M, groups: &mut [&mut GradientsParams], factor: f64) {
    if factor != 1.0 {
        for g in groups.iter_mut() {
            module.visit(&mut Scale { grads: g, factor });
        }
    }
}

/// Splits `grads` into (parameters of `part`, everything else of `whole`).
pub fn split_grads<M: Module, P: Module>(
    mut grads: Gradients,
    part: &P,
    whole: &M,
) -> (GradientsParams, GradientsParams) {
    let first = GradientsParams::from_module(&mut grads, part);
    let rest = GradientsParams::from_module(&mut grads, whole);
    (first, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    #[derive(Module, Debug)]
    struct Two {
        a: Linear,
        b: Linear,
    }

    #[test]
    fn global_clip_matches_a_hand_computation() {
        let dev = Device::flex().autodiff();
        dev.seed(3);
        let m = Two {
            a: LinearConfig::new(3, 2).init(&dev),
            b: LinearConfig::new(2, 1).init(&dev),
        };
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -2.0, 0.5], [1, 3]), &dev);
        let loss = m.b.forward(m.a.forward(x)).sum() * 3.0;
        let grads = loss.backward();
        let (mut ga, mut gb) = split_grads(grads, &m.a, &m);
        // hand: the squared norms of every gradient tensor, in f64
        let sq = |g: &GradientsParams, p: &Param<Tensor<2>>| -> f64 {
            let v: Vec<f32> = g.get::<2>(p.id).unwrap().into_data().try_to_vec().unwrap();
            v.iter().map(|x| f64::from(*x).powi(2)).sum()
        };
        let sqb = |g: &GradientsParams, p: &Param<Tensor<1>>| -> f64 {
            let v: Vec<f32> = g.get::<1>(p.id).unwrap().into_data().try_to_vec().unwrap();
            v.iter().map(|x| f64::from(*x).powi(2)).sum()
        };
        let want = (sq(&ga, &m.a.weight)
            + sqb(&ga, m.a.bias.as_ref().unwrap())
            + sq(&gb, &m.b.weight)
            + sqb(&gb, m.b.bias.as_ref().unwrap()))
        .sqrt();
        let before = ga.get::<2>(m.a.weight.id).unwrap();
        let norm = global_grad_norm(&m, &[&ga, &gb]);
        scale_grads(&m, &mut [&mut ga, &mut gb], clip_factor(norm, 0.1));
        assert!((norm - want).abs() < 1e-5 * want, "{norm} vs {want}");
        assert!(norm > 0.1);
        let after = global_grad_norm(&m, &[&ga, &gb]);
        assert!((after - 0.1).abs() < 1e-5, "{after}");
        // direction kept
        let r: Vec<f32> = (ga.get::<2>(m.a.weight.id).unwrap() / before)
            .into_data()
            .try_to_vec()
            .unwrap();
        let f = (0.1 / (want + 1e-6)) as f32;
        assert!(r.iter().all(|v| (v - f).abs() < 1e-4 * f), "{r:?}");
    }
}
