//! Box geometry, the one home: the anchor generator, the delta coder, host IoUs and box
//! formats, and their differentiable tensor forms. Boxes are xyxy in input pixels unless a
//! function says normalised cxcywh.

pub mod anchors;
pub mod boxes;
pub mod coder;
pub mod tensor;
