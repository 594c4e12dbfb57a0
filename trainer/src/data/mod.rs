//! The data layer: COCO reader, synthetic dataset, augmentation and the batching loader.

pub mod coco;
pub mod synth;

pub use coco::{Category, CocoDataset, CocoFile, ImageRecord, LoadOptions, Object};
