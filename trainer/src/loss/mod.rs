//! Training losses and target assignment of the one-to-one branch: focal-type classification
//! losses, the Hungarian matcher and the DETR set criterion (box geometry: `geometry`).

pub mod criterion;
pub mod focal;
pub mod matcher;
