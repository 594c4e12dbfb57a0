//! Image decoding and resizing for `POST /v1/detect`: the contract's one preprocessing
//! (`codetr_model::preprocess`: decode with the pixel limit checked from the header, EXIF
//! orientation, bilinear stretch resize), the same code the trainer evaluates through, with its
//! errors mapped to HTTP statuses.

use codetr_model::{Resize, preprocess};
use fast_image_resize as fr;

pub use codetr_model::preprocess::Decoded;

use crate::error::Result;

/// Decodes an uploaded image (JPEG, PNG or WebP) to RGB8, at most `max_pixels` pixels.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded> {
    Ok(preprocess::decode(bytes, max_pixels)?)
}

/// Brings `img` to the graph's `width`×`height` input as the graph's metadata says:
/// stretched, or letterboxed (top-left, padded; the scale capped by the metadata's
/// `letterbox_limits` when set). Returns the pixels and the `[height, width]` the image covers
/// (the whole input when stretched).
pub fn resize(
    img: &Decoded,
    width: u32,
    height: u32,
    how: Resize,
    limits: Option<[u32; 2]>,
    resizer: &mut fr::Resizer,
) -> Result<(Vec<u8>, [u32; 2])> {
    let src = [img.width, img.height];
    Ok(match how {
        Resize::Stretch => (
            preprocess::resize_rgb(&img.rgb, src, None, [width, height], resizer)?,
            [height, width],
        ),
        Resize::Letterbox => {
            preprocess::letterbox_rgb(&img.rgb, src, [width, height], limits, resizer)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ServeError;

    /// The contract's errors land on the statuses the API documents (the decoding itself is
    /// tested in `codetr_model::preprocess`).
    #[test]
    fn bad_bytes_get_the_right_error() {
        assert!(matches!(decode(b"", 10), Err(ServeError::InvalidImage(_))));
        assert!(matches!(
            decode(b"hello, I am a JPEG", 10),
            Err(ServeError::InvalidImage(_))
        ));
        assert!(matches!(
            decode(b"GIF89a\x01\x00\x01\x00", 10),
            Err(ServeError::UnsupportedMediaType(_))
        ));
        let mut png = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image::RgbImage::new(20, 10))
            .write_to(&mut png, image::ImageFormat::Png)
            .expect("encode");
        match decode(png.get_ref(), 100) {
            Err(ServeError::TooManyPixels {
                pixels: 200,
                limit: 100,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let d = decode(png.get_ref(), 200).expect("at the limit");
        let (out, valid) =
            resize(&d, 4, 4, Resize::Stretch, None, &mut fr::Resizer::new()).unwrap();
        assert_eq!((out, valid), (vec![0u8; 48], [4, 4]));
        // 20×10 letterboxed into 4×4: 4 wide, 2 high, the lower half padding
        let (out, valid) =
            resize(&d, 4, 4, Resize::Letterbox, None, &mut fr::Resizer::new()).unwrap();
        assert_eq!((out.len(), valid), (48, [2, 4]));
        let broken = Decoded {
            width: 10,
            height: 6,
            rgb: vec![0; 5],
        };
        assert!(matches!(
            resize(
                &broken,
                4,
                4,
                Resize::Stretch,
                None,
                &mut fr::Resizer::new()
            ),
            Err(ServeError::Internal(_))
        ));
    }
}
