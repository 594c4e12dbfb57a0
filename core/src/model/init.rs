//! Seeded initial weights that are the same on every device.
//!
//! Burn initialises most parameters lazily, at their first use, with the random generator of
//! the device they live on by then. Flex, CUDA and wgpu have different generators, so one seed
//! gave other starting weights on each device, and a GPU run could not be compared with the
//! CPU run of the same seed. Here a model is built on Flex from the seed, every parameter is
//! drawn there in module order, and the values are then moved to the device.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use crate::error::Result;

/// Draws every parameter of `module` that is still lazy, in module order (the order a
/// checkpoint stores them), on the device each lives on.
pub fn materialize<M: Module>(module: M) -> M {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // `val` runs the lazy initialiser once; clones share the result.
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}

/// The module `build` makes on Burn's Flex device seeded with `seed`, fully initialised there
/// ([`materialize`]), then moved to `device` (an autodiff device gets trainable parameters).
/// The weights depend on `seed` only, never on `device`.
pub fn seeded_on_host<M: Module>(
    seed: u64,
    device: &Device,
    build: impl FnOnce(&Device) -> Result<M>,
) -> Result<M> {
    let host = if device.is_autodiff() {
        Device::flex().autodiff()
    } else {
        Device::flex()
    };
    host.seed(seed);
    let module = materialize(build(&host)?);
    Ok(if host == *device {
        module
    } else {
        module.fork(device)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    fn weights(l: &Linear) -> Vec<f32> {
        l.weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 weights")
    }

    #[test]
    fn the_seed_alone_fixes_the_weights_whatever_touched_the_generator_since() {
        let dev = Device::flex();
        let build = |d: &Device| Ok(LinearConfig::new(6, 5).init(d));
        let a = seeded_on_host(7, &dev, build).unwrap();
        // Lazy parameters drawn later would see this draw: materialised ones do not.
        let _ = Tensor::<1>::random([64], burn::tensor::Distribution::Default, &dev);
        let b = seeded_on_host(7, &dev, build).unwrap();
        let c = seeded_on_host(8, &dev, build).unwrap();
        assert_eq!(weights(&a), weights(&b));
        assert_ne!(weights(&a), weights(&c));

        // Without materialising, a lazy layer draws at first use: another value after a draw.
        dev.seed(7);
        let lazy = LinearConfig::new(6, 5).init(&dev);
        let _ = Tensor::<1>::random([64], burn::tensor::Distribution::Default, &dev);
        assert_ne!(weights(&lazy), weights(&a));
    }

    #[test]
    fn an_autodiff_target_gets_trainable_parameters() {
        let dev = Device::flex().autodiff();
        let l = seeded_on_host(1, &dev, |d| Ok(LinearConfig::new(3, 2).init(d))).unwrap();
        assert!(l.weight.val().is_require_grad());
    }
}
