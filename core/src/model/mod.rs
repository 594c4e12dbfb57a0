//! The Co-DINO inference model (DINO-Deformable-DETR), one file per concept.

pub mod autocast;
pub mod backbone;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod detector;
pub mod drop_path;
pub mod encoder;
pub mod init;
pub mod msda;
pub mod msda_chunked;
#[cfg(any(feature = "cuda", feature = "vulkan", feature = "wgpu"))]
pub(crate) mod msda_cube;
pub mod msda_dims;
pub mod msda_host;
pub mod neck;
pub mod padding;
pub mod params;
pub mod position_encoding;
pub mod postprocess;
pub mod predict;
pub mod query_selection;
pub mod rows;
pub mod swin;
pub mod topk;

pub use config::{DetectorConfig, TransformerConfig};
pub use detector::{Detector, DetectorOutput};
