//! Mixed precision (issue 25): matrix products and convolutions in a half type, everything else
//! in f32 — the split of `torch.autocast`, and where a GPU's tensor cores pay. Parameters stay f32
//! (the optimizer's master copy); the casts are ops of the graph, so gradients reach them in f32.
//! Each product's output is cast back to f32, so norms, softmax, sigmoid, MSDA sampling and every
//! loss see f32.
//!
//! Like torch's autocast the setting is scoped to a thread: the training step enters it
//! ([`Autocast::enter`]); evaluation, export and code that never enters it computes in f32, bit for
//! bit as without this module.

use std::cell::Cell;

use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::module::{conv2d as conv2d_op, linear as linear_op};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// The type matrix products and convolutions run in during training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bfloat16 products: f32's exponent range, so no loss scaling.
    Bf16,
    /// IEEE half products: 5 exponent bits, so small gradients underflow without loss scaling
    /// (the trainer scales dynamically, see `train::loss_scale`).
    F16,
}

impl Precision {
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "f16"];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// Parses one of [`Precision::NAMES`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(Precision::F32),
            "bf16" => Some(Precision::Bf16),
            "f16" => Some(Precision::F16),
            _ => None,
        }
    }

    /// The half type products are cast to, `None` for f32.
    pub fn half(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// Whether `device` computes in this type. Burn reports a type it can only store or convert
    /// (bf16 on most Vulkan devices) as unsupported: computing in it would give garbage.
    pub fn supported_on(self, device: &Device) -> bool {
        self.half().is_none_or(|t| device.supports_dtype(t))
    }
}

thread_local! {
    static HALF: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// While alive, this thread's [`linear`], [`conv2d`] and [`matmul`] compute in the given
/// precision; dropping it restores the previous setting (scopes nest).
#[must_use = "autocast ends when the guard is dropped"]
pub struct Autocast {
    previous: Option<FloatDType>,
}

impl Autocast {
    pub fn enter(precision: Precision) -> Self {
        let previous = HALF.with(|h| h.replace(precision.half()));
        Autocast { previous }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        HALF.with(|h| h.set(self.previous));
    }
}

fn half() -> Option<FloatDType> {
    HALF.with(Cell::get)
}

/// `l.forward(x)`, as a half product when autocast is on. `x`: `[..., d_in]` → `[..., d_out]`.
pub fn linear<const D: usize>(l: &Linear, x: Tensor<D>) -> Tensor<D> {
    match half() {
        None => l.forward(x),
        Some(t) => linear_op(
            x.cast(t),
            l.weight.val().cast(t),
            l.bias.as_ref().map(|b| b.val().cast(t)),
        )
        .cast(FloatDType::F32),
    }
}

/// `c.forward(x)`, as a half convolution when autocast is on. `x`: `[B, C_in, H, W]`.
pub fn conv2d(c: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let Some(t) = half() else {
        return c.forward(x);
    };
    let [_, _, h, w] = x.dims();
    let pads = match c.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => [
            same_padding(c.kernel_size[0], c.stride[0], h),
            same_padding(c.kernel_size[1], c.stride[1], w),
        ],
    };
    let options = ConvOptions::new_with_padding(c.stride, pads, c.dilation, c.groups);
    conv2d_op(
        x.cast(t),
        c.weight.val().cast(t),
        c.bias.as_ref().map(|b| b.val().cast(t)),
        options,
    )
    .cast(FloatDType::F32)
}

/// "Same" padding (Burn's rule, private there): the output is `ceil(size / stride)`, the
/// extra row or column goes at the end.
fn same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = if out > 0 {
        ((out - 1) * stride + kernel).saturating_sub(size)
    } else {
        0
    };
    (total / 2, total - total / 2)
}

/// `a.matmul(b)`, as a half product when autocast is on (attention's scores and mixing).
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    match half() {
        None => a.matmul(b),
        Some(t) => a.cast(t).matmul(b.cast(t)).cast(FloatDType::F32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    fn vec(t: Tensor<1>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("f32 data")
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    #[derive(Module, Debug)]
    struct Net {
        conv: Conv2d,
        fc: Linear,
    }

    impl Net {
        fn forward(&self, x: Tensor<4>) -> Tensor<2> {
            let y = conv2d(&self.conv, x); // [2, 6, 5, 5]
            let y = y.reshape([2, 6 * 25]);
            let y = linear(&self.fc, y); // [2, 4]
            matmul(y.clone(), y.transpose())
        }
    }

    fn net(dev: &Device) -> Net {
        dev.seed(11);
        Net {
            conv: Conv2dConfig::new([3, 6], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(dev),
            fc: LinearConfig::new(150, 4).init(dev),
        }
    }

    /// Output and every parameter's gradient, flattened.
    fn run(dev: &Device, p: Precision) -> (Vec<f32>, Vec<Vec<f32>>) {
        let m = net(dev);
        let x = Tensor::<4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), dev);
        let _ac = Autocast::enter(p);
        let y = m.forward(x);
        assert_eq!(
            y.dtype(),
            burn::tensor::DType::F32,
            "products come back f32"
        );
        let out = vec(y.clone().flatten(0, 1));
        let grads = (y.powf_scalar(2.0).sum()).backward();
        let g = |t: Option<Tensor<1>>| vec(t.expect("a gradient reaches the f32 parameter"));
        let gs = vec![
            g(m.conv.weight.grad(&grads).map(|t| t.flatten(0, 3))),
            g(m.conv.bias.as_ref().and_then(|b| b.grad(&grads))),
            g(m.fc.weight.grad(&grads).map(|t| t.flatten(0, 1))),
            g(m.fc.bias.as_ref().and_then(|b| b.grad(&grads))),
        ];
        (out, gs)
    }

    #[test]
    fn off_is_the_modules_own_forward_bit_for_bit() {
        let dev = Device::flex();
        dev.seed(5);
        let m = net(&dev);
        let x = Tensor::<4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &dev);
        let ours = m.forward(x.clone());
        let theirs = {
            let y = m.fc.forward(m.conv.forward(x).reshape([2, 150]));
            y.clone().matmul(y.transpose())
        };
        assert_eq!(ours.into_data(), theirs.into_data());
    }

    #[test]
    fn half_products_track_f32_forward_and_backward() {
        let dev = Device::flex().autodiff();
        dev.seed(7);
        let (y32, g32) = run(&dev, Precision::F32);
        for (p, tol) in [(Precision::Bf16, 4e-2), (Precision::F16, 4e-3)] {
            assert!(p.supported_on(&dev), "{p:?} on flex");
            dev.seed(7);
            let (y, g) = run(&dev, p);
            let e = max_rel(&y, &y32);
            assert!(e < tol && e > 0.0, "{p:?} forward rel err {e}");
            for (a, b) in g.iter().zip(&g32) {
                let e = max_rel(a, b);
                assert!(e < 2.0 * tol && e > 0.0, "{p:?} grad rel err {e}");
            }
        }
    }

    #[test]
    fn the_scope_ends_with_its_guard_and_nests() {
        assert_eq!(half(), None);
        {
            let _a = Autocast::enter(Precision::Bf16);
            assert_eq!(half(), Some(FloatDType::BF16));
            {
                let _b = Autocast::enter(Precision::F32);
                assert_eq!(half(), None);
            }
            assert_eq!(half(), Some(FloatDType::BF16));
        }
        assert_eq!(half(), None);
        // another thread never sees this one's setting
        let _a = Autocast::enter(Precision::F16);
        assert_eq!(std::thread::spawn(half).join().ok(), Some(None));
    }

    #[test]
    fn names_round_trip() {
        for n in Precision::NAMES {
            assert_eq!(Precision::parse(n).map(Precision::name), Some(n));
        }
        assert_eq!(Precision::parse("fp16"), None);
    }
}
