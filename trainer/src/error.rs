//! The trainer's errors are the core crate's one enum: training fails the way the model layer
//! does (a bad argument or config, a checkpoint, a file) or with a data-layer error it carries.
//! A second enum of the same variants would only add a wrapping level to every message match.

pub use codetr_core::error::{Error, Result};
