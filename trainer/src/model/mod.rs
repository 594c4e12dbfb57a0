//! The Co-DINO inference model (DINO-Deformable-DETR), one file per concept.

pub mod backbone;
pub mod msda;
pub mod position_encoding;
