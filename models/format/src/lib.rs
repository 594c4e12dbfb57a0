//! The ONNX contract between `codetr-export` and `codetr-serve` (DESIGN.md §7).
//! Only the names are fixed so far; the metadata schema and validator arrive with the exporter.

/// Graph input: uint8 `[N, H, W, 3]` RGB pixels, already resized to the model's input size.
pub const INPUT_IMAGES: &str = "images";
/// Graph input: int64 `[N, 2]` original (height, width) of each image.
pub const INPUT_ORIG_SIZES: &str = "orig_sizes";
/// Graph output: int64 `[N, K]` class labels.
pub const OUTPUT_LABELS: &str = "labels";
/// Graph output: float32 `[N, K]` scores, sorted descending.
pub const OUTPUT_SCORES: &str = "scores";
/// Graph output: float32 `[N, K, 4]` xyxy boxes in original-image pixels.
pub const OUTPUT_BOXES: &str = "boxes";
