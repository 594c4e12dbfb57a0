//! Exponential moving average of the weights (optional; Burn has none): mmdet's
//! `ExpMomentumEMA` — after update t (1-based) the new weights get momentum
//! `(1 − m)·exp(−t / gamma) + m`, so early averages follow the model closely and later ones
//! settle at momentum m (0.0002 by default: an average over ~5000 steps).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// EMA settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    pub momentum: f64,
    pub gamma: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            momentum: 0.0002,
            gamma: 2000.0,
        }
    }
}

impl EmaConfig {
    /// Weight of the current model in update `t` (1-based).
    pub fn momentum_at(&self, t: u64) -> f64 {
        (1.0 - self.momentum) * (-(t as f64) / self.gamma).exp() + self.momentum
    }
}

/// Flattened current values by parameter id (inner device, no graph).
struct Collect(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let v = param.val().detach();
        let v = if v.is_autodiff() { v.inner() } else { v };
        let n: usize = v.dims().iter().product();
        self.0.insert(param.id, v.reshape([n]));
    }
}

struct Blend<'a> {
    current: &'a HashMap<ParamId, Tensor<1>>,
    m: f64,
}

impl ModuleMapper for Blend<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(cur) = self.current.get(&param.id) else {
            return param;
        };
        let m = self.m;
        let cur = cur.clone();
        param.map(|avg| {
            let dims = avg.dims();
            avg * (1.0 - m) + cur.reshape(dims) * m
        })
    }
}

/// `avg ← (1 − m)·avg + m·current` for every parameter of `current` that `avg` shares (by
/// id: the average starts as a copy of the model). Returns the new average.
pub fn ema_update<M: Module>(avg: M, current: &M, m: f64) -> M {
    let mut c = Collect(HashMap::new());
    current.visit(&mut c);
    avg.map(&mut Blend { current: &c.0, m })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    #[test]
    fn two_updates_by_hand() {
        let dev = Device::flex();
        let mut model: Linear = LinearConfig::new(2, 1).init(&dev);
        model.weight = model
            .weight
            .map(|_| Tensor::from_data(TensorData::new(vec![1.0f32, 2.0], [2, 1]), &dev));
        let avg = model.clone();
        let cfg = EmaConfig {
            momentum: 0.1,
            gamma: 10.0,
        };
        // the model moves to (3, 4), then (5, 6)
        let set = |m: Linear, a: f32, b: f32| -> Linear {
            let mut m = m;
            m.weight = m
                .weight
                .map(|_| Tensor::from_data(TensorData::new(vec![a, b], [2, 1]), &dev));
            m
        };
        let model = set(model, 3.0, 4.0);
        let m1 = cfg.momentum_at(1);
        let avg = ema_update(avg, &model, m1);
        let model = set(model, 5.0, 6.0);
        let m2 = cfg.momentum_at(2);
        let avg = ema_update(avg, &model, m2);
        let got: Vec<f32> = avg.weight.val().into_data().try_to_vec().unwrap();
        let hand = |w0: f64, w1: f64, w2: f64| {
            let a1 = (1.0 - m1) * w0 + m1 * w1;
            (1.0 - m2) * a1 + m2 * w2
        };
        let want = [hand(1.0, 3.0, 5.0), hand(2.0, 4.0, 6.0)];
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // m at t=1: 0.9·e^{-0.1} + 0.1
        assert!((m1 - (0.9 * (-0.1f64).exp() + 0.1)).abs() < 1e-12);
    }
}
