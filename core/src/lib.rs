//! codetr-core: the Co-DINO detector in Burn, as inference and export see it.
//!
//! The model (one file per component, each with its ONNX emitter beside its `forward`), the
//! ONNX graph builder, box geometry, checkpoints and device selection. Training — the auxiliary
//! heads, losses, denoising, the loop — is `codetr-train` on top; the data layer is
//! `codetr-data` below.

pub mod device;
pub mod error;
pub mod geometry;
pub mod import;
pub mod model;
pub mod onnx;

pub use error::{Error, Result};
