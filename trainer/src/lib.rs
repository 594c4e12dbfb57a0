//! codetr-train: Co-DETR (Co-DINO) training in Rust.
//!
//! The Burn side of codetr: the model and its ONNX graph writer, box geometry, the auxiliary
//! heads, losses and the training loop. The data layer (COCO, synthetic data, augmentation,
//! loader, evaluator) is the `codetr-data` crate below it.

pub mod auxiliary;
pub mod device;
pub mod error;
pub mod geometry;
pub mod host;
pub mod loss;
pub mod model;
pub mod onnx;
pub mod train;

pub use error::{Error, Result};
