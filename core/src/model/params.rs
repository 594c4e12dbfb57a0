//! Checks on a module's parameters shared by the weight loaders (checkpoints, torchvision
//! backbones): a leaf, so the loaders and the modules they load do not import each other.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Path of the first parameter holding NaN/inf, if any (e.g. `decoder.layers.0.norm1.gamma`).
pub fn first_non_finite<M: Module>(model: &M) -> Option<String> {
    #[derive(Default)]
    struct V {
        stack: Vec<String>,
        found: Option<String>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.found.is_none() && !param.val().is_finite().all().into_scalar::<bool>() {
                self.found = Some(self.stack.join("."));
            }
        }
    }
    let mut v = V::default();
    model.visit(&mut v);
    v.found
}
