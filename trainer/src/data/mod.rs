//! The data layer: COCO reader, synthetic dataset, augmentation and the batching loader.

pub mod augment;
pub mod coco;
pub mod loader;
pub mod synth;

pub use augment::AugmentConfig;
pub use coco::{Category, CocoDataset, CocoFile, ImageRecord, LoadOptions, Object};
pub use loader::{Batch, Loader, LoaderConfig, Target};
