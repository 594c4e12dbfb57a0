//! Image decoding and resizing, with limits checked from the header before any pixel buffer is
//! allocated (a decompression bomb costs a header read, not gigabytes).
//!
//! The resize is the one the trainer uses for evaluation (`codetr_data::augment::
//! crop_resize_rgb` without crop or flip): fast_image_resize bilinear convolution, stretched to
//! the graph's square input. Keeping them identical keeps served accuracy equal to the
//! evaluated one.

use std::io::Cursor;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::error::{Result, ServeError};

/// Formats the server decodes.
pub const ACCEPTED: &[(&str, ImageFormat)] = &[
    ("image/jpeg", ImageFormat::Jpeg),
    ("image/png", ImageFormat::Png),
    ("image/webp", ImageFormat::WebP),
];

/// A decoded image, EXIF orientation applied, as packed RGB8.
#[derive(Debug)]
pub struct Decoded {
    /// Width after EXIF orientation.
    pub width: u32,
    /// Height after EXIF orientation.
    pub height: u32,
    /// `height × width × 3` bytes.
    pub rgb: Vec<u8>,
}

/// The format of `bytes` from its magic number: Ok for JPEG/PNG/WebP, 415 for other image
/// formats we recognise, 422 for anything else.
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat> {
    if bytes.is_empty() {
        return Err(ServeError::InvalidImage("empty image".into()));
    }
    match image::guess_format(bytes) {
        Ok(f) if ACCEPTED.iter().any(|(_, a)| *a == f) => Ok(f),
        Ok(f) => Err(ServeError::UnsupportedMediaType(format!(
            "{} images are not supported; send JPEG, PNG or WebP",
            f.extensions_str()
                .first()
                .copied()
                .unwrap_or("these")
                .to_uppercase()
        ))),
        Err(_) => Err(ServeError::InvalidImage(
            "not a JPEG, PNG or WebP image (unrecognised header)".into(),
        )),
    }
}

/// Decodes `bytes` to RGB8 with EXIF orientation applied. Images over `max_pixels` are refused
/// from their header dimensions, before decoding.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded> {
    let format = sniff(bytes)?;
    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        // The JPEG decoder fills a truncated scan with grey instead of failing; a cut-off
        // upload must not be served as if it were the whole picture.
        return Err(ServeError::InvalidImage(
            "truncated JPEG (no end-of-image marker after the scan)".into(),
        ));
    }
    let invalid = |e: image::ImageError| ServeError::InvalidImage(format!("cannot decode: {e}"));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // Belt and braces: the decoder itself also refuses allocations beyond what the pixel limit
    // implies (16-bit RGBA is 8 bytes per pixel).
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(invalid)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(ServeError::TooManyPixels {
            width: w,
            height: h,
            pixels,
            limit: max_pixels,
        });
    }
    if pixels == 0 {
        return Err(ServeError::InvalidImage(format!("image is {w}×{h}")));
    }
    let orientation = decoder.orientation().map_err(invalid)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(invalid)?;
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    Ok(Decoded {
        width: rgb.width(),
        height: rgb.height(),
        rgb: rgb.into_raw(),
    })
}

/// Whether a JPEG has an end-of-image marker (FF D9) after its first start-of-scan (FF DA).
/// Inside entropy-coded data every FF byte is followed by 00 or a restart marker, so FF D9
/// there can only be the real end.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Stretch-resizes a decoded image to `width`×`height` RGB8 (bilinear).
pub fn resize(
    img: &Decoded,
    width: u32,
    height: u32,
    resizer: &mut fr::Resizer,
) -> Result<Vec<u8>> {
    if img.width == width && img.height == height {
        return Ok(img.rgb.clone());
    }
    let src = fr::images::ImageRef::new(img.width, img.height, &img.rgb, fr::PixelType::U8x3)
        .map_err(|e| ServeError::Internal(format!("resize source: {e}")))?;
    let mut dst = fr::images::Image::new(width, height, fr::PixelType::U8x3);
    let opts =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    resizer
        .resize(&src, &mut dst, &opts)
        .map_err(|e| ServeError::Internal(format!("resize: {e}")))?;
    Ok(dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: DynamicImage, f: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, f).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_every_accepted_format_and_pixel_type() {
        let rgb =
            image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 9]));
        for f in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let d = decode(&encode(DynamicImage::ImageRgb8(rgb.clone()), f), 1000).unwrap();
            assert_eq!((d.width, d.height, d.rgb.len()), (7, 5, 105), "{f:?}");
        }
        // Grey, RGBA and 16-bit PNGs all come out as RGB8.
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(3, 2, image::Luma([77])));
        let d = decode(&encode(grey, ImageFormat::Png), 100).unwrap();
        assert_eq!(&d.rgb[..3], &[77, 77, 77]);
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            3,
            2,
            image::Rgba([1, 2, 3, 0]),
        ));
        assert_eq!(
            &decode(&encode(rgba, ImageFormat::Png), 100).unwrap().rgb[..3],
            &[1, 2, 3]
        );
        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            3,
            2,
            image::Rgb([65535u16, 0, 32896]),
        ));
        assert_eq!(
            &decode(&encode(deep, ImageFormat::Png), 100).unwrap().rgb[..3],
            &[255, 0, 128]
        );
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        // A PNG header claiming 100000×100000 with no pixel data: refused by size, not by a
        // failed 30 GB allocation or a truncated-data error.
        let mut png = encode(
            DynamicImage::ImageRgb8(image::RgbImage::new(1, 1)),
            ImageFormat::Png,
        );
        // IHDR data is bytes 16..29 (width, height first), its CRC at 29..33 over 12..29.
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        match decode(&png, 40_000_000) {
            Err(ServeError::TooManyPixels { pixels, .. }) => assert_eq!(pixels, 10_000_000_000),
            other => panic!("{other:?}"),
        }
    }

    /// PNG's CRC-32 (ISO 3309), bitwise.
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

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
        let jpg = encode(
            DynamicImage::ImageRgb8(image::RgbImage::new(64, 64)),
            ImageFormat::Jpeg,
        );
        assert!(matches!(
            decode(&jpg[..jpg.len() / 3], 1 << 20),
            Err(ServeError::InvalidImage(_))
        ));
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 4×2 JPEG with an EXIF APP1 segment saying "rotate 90° CW" (orientation 6) must come
        // out 2×4.
        let jpg = encode(
            DynamicImage::ImageRgb8(image::RgbImage::new(4, 2)),
            ImageFormat::Jpeg,
        );
        let exif: &[u8] = &[
            b'E', b'x', b'i', b'f', 0, 0, // header
            b'M', b'M', 0, 42, 0, 0, 0, 8, // big-endian TIFF, IFD at 8
            0, 1, // one entry
            0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // Orientation, SHORT, 1, value 6
            0, 0, 0, 0, // no next IFD
        ];
        let mut with = jpg[..2].to_vec(); // SOI
        with.extend_from_slice(&[0xFF, 0xE1]);
        with.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        with.extend_from_slice(exif);
        with.extend_from_slice(&jpg[2..]);
        let d = decode(&with, 1000).unwrap();
        assert_eq!((d.width, d.height), (2, 4));
    }

    #[test]
    fn resize_matches_size_and_keeps_flat_colour() {
        let d = Decoded {
            width: 10,
            height: 6,
            rgb: [10u8, 20, 30].repeat(60),
        };
        let out = resize(&d, 4, 4, &mut fr::Resizer::new()).unwrap();
        assert_eq!(out, [10u8, 20, 30].repeat(16));
    }
}
