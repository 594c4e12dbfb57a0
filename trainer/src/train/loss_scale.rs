//! Dynamic loss scaling for f16 products (Micikevicius et al., "Mixed Precision Training", 2018;
//! the rule of `torch.cuda.amp.GradScaler`). f16 flushes magnitudes below ~6e-8 to zero, and
//! gradients of a detector's loss reach that: the loss is multiplied by `scale` before the
//! backward pass and the gradients divided by it before clipping and the optimizer. A step whose
//! gradients overflow (inf/NaN) is skipped and the scale halved; after `GROWTH_INTERVAL` clean
//! steps in a row it doubles. bf16 and f32 keep a fixed scale of 1, which changes nothing.

use serde::{Deserialize, Serialize};

use codetr_core::model::autocast::Precision;

/// The scaler's state; saved in the checkpoint so a resumed run continues bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// Multiplier of the loss before backward (a power of two, so scaling is exact).
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub clean_steps: u64,
    /// Whether the scale moves (f16) or stays 1 (f32, bf16).
    pub dynamic: bool,
}

/// What the step does with its gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScaledStep {
    /// Finite gradients: multiply them by `unscale` (= 1 / scale) and step.
    Apply { unscale: f64 },
    /// An inf or NaN in the gradients: no optimizer step; the scale was halved.
    Skip,
}

impl LossScale {
    pub const INITIAL: f64 = 65536.0;
    pub const GROWTH_INTERVAL: u64 = 2000;
    /// Below this the scale stops halving: gradients that overflow at scale 1 are a divergence,
    /// not an underflow, and should show as such.
    pub const MIN: f64 = 1.0;

    pub fn new(precision: Precision) -> Self {
        let dynamic = precision == Precision::F16;
        LossScale {
            scale: if dynamic { Self::INITIAL } else { 1.0 },
            clean_steps: 0,
            dynamic,
        }
    }

    /// Given whether the scaled gradients are finite, decides the step and moves the scale.
    /// A fixed scale always applies: f32 and bf16 step exactly as they did without a scaler.
    pub fn update(&mut self, finite: bool) -> ScaledStep {
        if !self.dynamic {
            return ScaledStep::Apply { unscale: 1.0 };
        }
        if !finite {
            self.scale = (self.scale / 2.0).max(Self::MIN);
            self.clean_steps = 0;
            return ScaledStep::Skip;
        }
        let unscale = 1.0 / self.scale;
        self.clean_steps += 1;
        if self.clean_steps >= Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        ScaledStep::Apply { unscale }
    }
}

impl Default for LossScale {
    /// A checkpoint written before the scaler existed ran in f32.
    fn default() -> Self {
        Self::new(Precision::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_scales_always_apply_at_one() {
        for p in [Precision::F32, Precision::Bf16] {
            let mut s = LossScale::new(p);
            for finite in [true, false, true] {
                assert_eq!(s.update(finite), ScaledStep::Apply { unscale: 1.0 });
                assert_eq!(s.scale, 1.0);
            }
        }
    }

    #[test]
    fn f16_halves_on_overflow_and_doubles_after_clean_runs() {
        let mut s = LossScale::new(Precision::F16);
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.update(false), ScaledStep::Skip);
        assert_eq!(s.scale, 32768.0);
        assert_eq!(
            s.update(true),
            ScaledStep::Apply {
                unscale: 1.0 / 32768.0
            }
        );
        for _ in 1..LossScale::GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!(s.scale, 32768.0, "one step short of the interval");
        s.update(true);
        assert_eq!((s.scale, s.clean_steps), (65536.0, 0));
        // an overflow resets the clean run
        for _ in 0..10 {
            s.update(true);
        }
        s.update(false);
        assert_eq!((s.scale, s.clean_steps), (32768.0, 0));
        // never below MIN
        for _ in 0..40 {
            s.update(false);
        }
        assert_eq!(s.scale, LossScale::MIN);
    }
}
