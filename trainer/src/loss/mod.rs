//! Training losses and target assignment of the one-to-one branch: box geometry, focal-type
//! classification losses, the Hungarian matcher and the DETR set criterion.

pub mod boxes;
pub mod criterion;
pub mod focal;
pub mod matcher;
