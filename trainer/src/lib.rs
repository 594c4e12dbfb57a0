//! codetr-train: Co-DETR (Co-DINO) training in Rust.
//!
//! This crate holds everything the trainer needs and the exporter reuses: the data layer
//! (COCO reader, synthetic dataset, augmentation, batching), the COCO evaluator, and (in
//! later modules) the Burn model, the auxiliary heads, losses and the training loop.

pub mod auxiliary;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod geometry;
pub mod host;
pub mod loss;
pub mod model;
pub mod onnx;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
