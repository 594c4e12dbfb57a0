//! Stochastic depth ("DropPath", Huang et al. 2016): during training each residual branch of a
//! block is dropped for a whole sample with probability `p`, and kept branches are scaled by
//! `1 / (1 − p)` so the expectation is the plain block. The official Swin-L Co-DINO recipe trains
//! with it (`drop_path_rate` 0.3, rising linearly over the blocks, [`rates`]).
//!
//! Like [`super::autocast`], it is scoped to a thread: the training step enters it
//! ([`StochasticDepth::enter`]) with a generator of its own; evaluation, export and code that never
//! enters it compute the plain block, bit for bit as without this module. The masks come from our
//! own [`Rng`] (a handful of numbers per block, uploaded as a `[B, 1, …]` tensor), so a step's masks
//! are a function of (seed, step): a resumed run draws exactly what the uninterrupted one drew.

use std::cell::RefCell;

use burn::tensor::{Tensor, TensorData};
use codetr_data::rng::Rng;

thread_local! {
    static SCOPE: RefCell<Option<Rng>> = const { RefCell::new(None) };
}

/// While alive, this thread's [`drop_path`] calls drop branches, drawing from `rng` in call
/// order; dropping the guard restores the previous scope (scopes nest).
#[must_use = "stochastic depth ends when the guard is dropped"]
pub struct StochasticDepth {
    previous: Option<Rng>,
}

impl StochasticDepth {
    pub fn enter(rng: Rng) -> Self {
        let previous = SCOPE.with(|s| s.replace(Some(rng)));
        StochasticDepth { previous }
    }
}

impl Drop for StochasticDepth {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SCOPE.with(|s| *s.borrow_mut() = previous);
    }
}

/// `y`, a residual branch `[B, ...]`: outside a [`StochasticDepth`] scope or with `p ≤ 0`,
/// unchanged; inside, each sample's branch is zeroed with probability `p` and otherwise
/// multiplied by `1 / (1 − p)`. `p` must be below 1 (configs are validated).
pub fn drop_path<const D: usize>(y: Tensor<D>, p: f64) -> Tensor<D> {
    if p <= 0.0 {
        return y;
    }
    let b = y.dims()[0];
    let Some(scale) = SCOPE.with(|s| {
        s.borrow_mut().as_mut().map(|rng| {
            let keep = 1.0 - p;
            // kept iff u ≥ p: the official floor(keep + u) with u uniform in [0, 1)
            (0..b)
                .map(|_| {
                    if rng.f64() >= p {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<f32>>()
        })
    }) else {
        return y;
    };
    let mut shape = [1usize; D];
    shape[0] = b;
    let mask = Tensor::<D>::from_data(TensorData::new(scale, shape), &y.device());
    y * mask
}

/// The per-block rates of a trunk of `blocks` blocks: `linspace(0, rate, blocks)`, the first
/// block never dropped and the last at `rate` (mmdetection's and the Swin paper's schedule).
pub fn rates(rate: f64, blocks: usize) -> Vec<f64> {
    match blocks {
        0 => Vec::new(),
        1 => vec![0.0],
        n => (0..n).map(|i| rate * i as f64 / (n - 1) as f64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn ones(b: usize) -> Tensor<3> {
        Tensor::<3>::ones([b, 5, 3], &Device::flex())
    }

    fn per_sample(t: Tensor<3>) -> Vec<f32> {
        let [b, n, c] = t.dims();
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        (0..b)
            .map(|i| {
                let s = &v[i * n * c..(i + 1) * n * c];
                assert!(s.iter().all(|x| *x == s[0]), "a sample is dropped whole");
                s[0]
            })
            .collect()
    }

    #[test]
    fn off_outside_a_scope_and_at_rate_zero() {
        let y = ones(4);
        let same = |t: Tensor<3>| t.equal(ones(4)).all().into_scalar::<bool>();
        assert!(same(drop_path(y.clone(), 0.3)));
        let _s = StochasticDepth::enter(Rng::new(1));
        assert!(same(drop_path(y, 0.0)));
    }

    #[test]
    fn drops_whole_samples_at_the_rate_and_keeps_the_expectation() {
        let p = 0.3;
        let _s = StochasticDepth::enter(Rng::new(7));
        let mut kept = 0usize;
        let mut sum = 0.0f64;
        let n = 4000;
        for _ in 0..n / 8 {
            for v in per_sample(drop_path(ones(8), p)) {
                assert!(
                    v == 0.0 || (f64::from(v) - 1.0 / (1.0 - p)).abs() < 1e-6,
                    "{v}"
                );
                kept += usize::from(v > 0.0);
                sum += f64::from(v);
            }
        }
        // binomial(4000, 0.7): sd 29 kept samples; 5 sd bounds
        let rate = kept as f64 / n as f64;
        assert!(
            (rate - (1.0 - p)).abs() < 5.0 * (p * (1.0 - p) / n as f64).sqrt(),
            "{rate}"
        );
        let mean = sum / n as f64;
        assert!((mean - 1.0).abs() < 0.04, "E[branch] = {mean}");
    }

    #[test]
    fn masks_are_a_function_of_the_generator_and_scopes_nest() {
        let draw = |seed| {
            let _s = StochasticDepth::enter(Rng::new(seed));
            (0..6)
                .flat_map(|_| per_sample(drop_path(ones(4), 0.5)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        let outer = StochasticDepth::enter(Rng::new(9));
        {
            let _inner = StochasticDepth::enter(Rng::new(3));
        }
        let after: Vec<f32> = (0..6)
            .flat_map(|_| per_sample(drop_path(ones(4), 0.5)))
            .collect();
        drop(outer);
        assert_eq!(after, draw(9), "the outer scope resumes its own stream");
        assert!(
            per_sample(drop_path(ones(4), 0.5))
                .iter()
                .all(|v| *v == 1.0)
        );
    }

    #[test]
    fn rates_rise_linearly_from_zero() {
        // mmdetection: [x.item() for x in torch.linspace(0, 0.3, 24)]
        let r = rates(0.3, 24);
        assert_eq!(r.len(), 24);
        assert_eq!(r[0], 0.0);
        assert!((r[23] - 0.3).abs() < 1e-12);
        assert!((r[1] - 0.3 / 23.0).abs() < 1e-12);
        assert_eq!(rates(0.3, 1), vec![0.0]);
        assert!(rates(0.3, 0).is_empty());
    }
}
