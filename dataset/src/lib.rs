//! codetr-data: the data layer of codetr, free of any tensor library.
//!
//! COCO reading ([`coco`]), the synthetic shapes dataset ([`synth`]), augmentation
//! ([`augment`]), the batching loader ([`loader`]), the pycocotools-exact evaluator ([`eval`]),
//! and two utilities every crate above uses: the seeded [`rng`] and atomic file writes
//! ([`fsutil`]). The trainer turns batches into tensors; the exporter's `--check` uses the
//! generator and the evaluator.

pub mod augment;
pub mod coco;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod loader;
pub mod rng;
pub mod stdout;
pub mod synth;

pub use augment::AugmentConfig;
pub use coco::{Category, CocoDataset, CocoFile, ImageRecord, LoadOptions, Object};
pub use error::{CocoLocation, Error, Result};
pub use loader::{Batch, Loader, LoaderConfig, Target};
