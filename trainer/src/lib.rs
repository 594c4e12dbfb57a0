//! codetr-train: Co-DETR (Co-DINO) training in Rust.
//!
//! Co-DETR's training side in Burn: the auxiliary heads, losses, denoising, the loop and its
//! CLI. The detector itself (model, ONNX writer, geometry, checkpoints) is `codetr-core`; the
//! data layer (COCO, synthetic data, augmentation, loader, evaluator) is `codetr-data`.

pub mod auxiliary;
pub mod error;
pub mod host;
pub mod loss;
pub mod train;

pub use error::{Error, Result};
