//! A small ONNX graph builder and protobuf writer: what the model modules' emitters (each
//! beside its `forward`) call to lower themselves into one standard-ops graph (opset 17).

pub mod builder;
pub mod emit;
pub mod levels;
pub mod proto;

pub use builder::{Dim, ElemType, GraphBuilder};
pub use levels::{Level, LevelDim, Levels};
