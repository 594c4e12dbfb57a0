//! Single-image prediction on the host: decode (EXIF-corrected), resize to the model's input
//! (stretched to its square, or keeping the aspect ratio), detect, and return boxes in the
//! original image's pixels.

use std::path::Path;

use codetr_model::{Resize, filter, preprocess};
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

/// The `[height, width]` an `[h, w]` image is run at by [`predict_file`]: the model's square
/// for [`Resize::Stretch`]; for [`Resize::Letterbox`] its keep-ratio size, unpadded (one image
/// needs no canvas, as the official test pipeline runs one image at its own size), capped by
/// `limits` `[short, long]` (the official `[800, 1333]`) or else fitted to the model's square.
pub fn predict_size(
    [h, w]: [u32; 2],
    input_size: u32,
    (resize, limits): (Resize, Option<[u32; 2]>),
) -> [u32; 2] {
    match (resize, limits) {
        (Resize::Stretch, _) => [input_size, input_size],
        (Resize::Letterbox, Some([short, long])) => {
            preprocess::letterbox_size([h, w], [long, long], Some([short, long]))
        }
        (Resize::Letterbox, None) => {
            preprocess::letterbox_size([h, w], [input_size, input_size], None)
        }
    }
}

/// Runs the model on an image file, resized as `resize` says (see [`predict_size`]); keeps
/// detections by the contract's filter (`score >= score_threshold`), as the server does.
pub fn predict_file(
    model: &Detector,
    class_names: &[String],
    path: &Path,
    score_threshold: f32,
    resize: (Resize, Option<[u32; 2]>),
) -> Result<Vec<Prediction>> {
    let img = decode_rgb(path, 0)?;
    let mut resizer = fast_image_resize::Resizer::new();
    let (scores, labels, boxes) = detect_image(model, &img, resize, &mut resizer)?;
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

/// The model's top `max_detections` on one decoded image, alone at [`predict_size`] (the
/// official test pipeline's one image at its own size under [`Resize::Letterbox`]): scores,
/// labels and `[x1, y1, x2, y2]` boxes in the image's pixels, by rank.
pub fn detect_image(
    model: &Detector,
    img: &image::RgbImage,
    resize: (Resize, Option<[u32; 2]>),
    resizer: &mut fast_image_resize::Resizer,
) -> Result<(Vec<f32>, Vec<i64>, Vec<f32>)> {
    let (w, h) = img.dimensions();
    let [ih, iw] = predict_size([h, w], model.config().input_size, resize);
    let px = crop_resize_rgb(img, &Geometry::identity(w, h), iw, ih, resizer)?;
    let device = model.level_embed.val().device();
    // The image fills the input, so the model's boxes (relative to it) scale to the original.
    // An input the model cannot take — a side below the coarsest stride, or fewer encoder
    // tokens than queries (a small or very thin letterboxed image) — is padded until it can,
    // the padding masked as in a padded batch.
    let cfg = model.config();
    let min = cfg.level_strides().last().copied().unwrap_or(32) as u32;
    let mut c = [ih.max(min), iw.max(min)];
    while cfg.tokens_at(c[0] as usize, c[1] as usize) < cfg.transformer.num_queries {
        c = [c[0] + min, c[1] + min];
    }
    let [ch, cw] = c;
    let canvas = preprocess::place_top_left(px, [iw, ih], [cw, ch]);
    let x = pixels_to_tensor(&canvas, 1, ch as usize, cw as usize, &device)?;
    let det = if [ch, cw] == [ih, iw] {
        model.detect(x, &[[h, w]])?
    } else {
        model.detect_padded(x, Some(&[[ih as usize, iw as usize]]), &[[h, w]])?
    };
    det.to_host()
}
