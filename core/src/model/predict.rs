//! Single-image prediction on the host: decode (EXIF-corrected), stretch-resize to the model's
//! input, detect, and return boxes in the original image's pixels.

use std::path::Path;

use codetr_model::filter;
use serde::Serialize;

use super::detector::{Detector, pixels_to_tensor};
use crate::error::Result;
use codetr_data::augment::{Geometry, crop_resize_rgb};
use codetr_data::coco::decode_rgb;

/// One detection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub class_id: usize,
    pub label: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]` pixels of the original image.
    pub bbox: [f32; 4],
}

/// Runs the model on an image file; keeps detections by the contract's filter
/// (`score >= score_threshold`), as the server does.
pub fn predict_file(
    model: &Detector,
    class_names: &[String],
    path: &Path,
    score_threshold: f32,
) -> Result<Vec<Prediction>> {
    let img = decode_rgb(path, 0)?;
    let (w, h) = img.dimensions();
    let s = model.config().input_size;
    let mut resizer = fast_image_resize::Resizer::new();
    let px = crop_resize_rgb(&img, &Geometry::identity(w, h), s, s, &mut resizer)?;
    let device = model.level_embed.val().device();
    let x = pixels_to_tensor(&px, 1, s as usize, s as usize, &device)?;
    let det = model.detect(x, &[[h, w]])?;
    let (scores, labels, boxes) = det.to_host()?;
    let boxes: Vec<[f32; 4]> = boxes
        .chunks_exact(4)
        .map(|b| [b[0], b[1], b[2], b[3]])
        .collect();
    Ok(
        filter::keep(&labels, &scores, &boxes, score_threshold, None, usize::MAX)
            .map(|k| Prediction {
                class_id: k.class_id,
                label: filter::class_name(class_names, k.class_id),
                score: k.score,
                bbox: k.bbox,
            })
            .collect(),
    )
}
