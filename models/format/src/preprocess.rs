//! The one preprocessing every reader of the graph applies before `images` (docs/DESIGN.md §7):
//! decode (JPEG, PNG or WebP, with the pixel limit checked from the header before any pixel
//! buffer is allocated: a decompression bomb costs a header read, not gigabytes), EXIF
//! orientation, RGB8, then a stretch resize to the graph's input by bilinear convolution
//! (antialiased when shrinking). The server serves through it and the trainer evaluates through
//! it, so served accuracy is the evaluated one.

use std::io::Cursor;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::Error;

/// The formats the graph's readers decode, with their media types.
pub const ACCEPTED: &[(&str, ImageFormat)] = &[
    ("image/jpeg", ImageFormat::Jpeg),
    ("image/png", ImageFormat::Png),
    ("image/webp", ImageFormat::WebP),
];

/// A decoded image, EXIF orientation applied, as packed RGB8 (`[height, width, 3]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Width after orientation, pixels.
    pub width: u32,
    /// Height after orientation, pixels.
    pub height: u32,
    /// `width · height · 3` bytes, row-major RGB.
    pub rgb: Vec<u8>,
}

/// The format of `bytes` if it is one of [`ACCEPTED`], from its header.
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat, Error> {
    if bytes.is_empty() {
        return Err(Error::InvalidImage("empty image".into()));
    }
    match image::guess_format(bytes) {
        Ok(f) if ACCEPTED.iter().any(|(_, a)| *a == f) => Ok(f),
        Ok(f) => Err(Error::UnsupportedImage(format!(
            "{} images are not supported; send JPEG, PNG or WebP",
            f.extensions_str()
                .first()
                .copied()
                .unwrap_or("these")
                .to_uppercase()
        ))),
        Err(_) => Err(Error::InvalidImage(
            "not a JPEG, PNG or WebP image (unrecognised header)".into(),
        )),
    }
}

/// Decodes `bytes` to RGB8 with its EXIF orientation applied. More than `max_pixels` pixels
/// (read from the header) is [`Error::TooManyPixels`]; `u64::MAX` means no limit.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, Error> {
    let format = sniff(bytes)?;
    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        return Err(Error::InvalidImage(
            "truncated JPEG (no end-of-image marker after the scan)".into(),
        ));
    }
    let invalid = |e: image::ImageError| Error::InvalidImage(format!("cannot decode: {e}"));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // decoders may hold up to 8 bytes per pixel (16-bit RGBA) plus their own buffers
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(invalid)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(Error::TooManyPixels {
            width: w,
            height: h,
            pixels,
            limit: max_pixels,
        });
    }
    if pixels == 0 {
        return Err(Error::InvalidImage(format!("image is {w}×{h}")));
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

/// A JPEG whose scan is cut short decodes to grey rows without an error in most decoders:
/// refuse it when no end-of-image marker follows the start of scan.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Stretch-resizes `crop` (`[left, top, width, height]` in source pixels; `None`: the whole
/// image) of the packed RGB8 `src` (`width`×`height`) to `out_w`×`out_h`, bilinear convolution.
/// The whole image at its own size is returned as is.
pub fn resize_rgb(
    src: &[u8],
    [width, height]: [u32; 2],
    crop: Option<[f64; 4]>,
    [out_w, out_h]: [u32; 2],
    resizer: &mut fr::Resizer,
) -> Result<Vec<u8>, Error> {
    if crop.is_none() && (width, height) == (out_w, out_h) {
        return Ok(src.to_vec());
    }
    // Typed views, not `Resizer::resize`: that one dispatches at run time over every pixel
    // type, and its generic kernels (all types × SSE4.1/AVX2 × const-generic row counts) were
    // instantiated in this crate: ~85 % of its machine code and 100 s of every cold build.
    type Rgb = fr::pixels::U8x3;
    let view = fr::images::TypedImageRef::<Rgb>::from_buffer(width, height, src)
        .map_err(|e| Error::Resize(format!("resize source: {e}")))?;
    let mut out = vec![0u8; out_w as usize * out_h as usize * 3];
    let mut dst = fr::images::TypedImage::<Rgb>::from_buffer(out_w, out_h, &mut out)
        .map_err(|e| Error::Resize(format!("resize target: {e}")))?;
    let mut opts =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    if let Some([l, t, w, h]) = crop {
        opts = opts.crop(l, t, w, h);
    }
    resizer
        .resize_typed(&view, &mut dst, &opts)
        .map_err(|e| Error::Resize(format!("resize: {e}")))?;
    Ok(out)
}

/// The `[height, width]` an `[h, w]` image takes inside an `input` canvas when resized keeping
/// its aspect ratio to fit (the letterbox): scale `min(H/h, W/w)`, each side rounded as
/// mmcv's `rescale_size` (`int(side · scale + 0.5)`), at least 1 and at most the canvas.
///
/// `limits` `[short, long]` caps the scale as mmcv's keep-ratio `Resize(scale=(long, short))`
/// does: `min(long / max(h, w), short / min(h, w))` — the official Co-DINO test pipeline's
/// `(1333, 800)`. With a canvas of at least `long` on both sides that is exactly the official
/// size for every orientation; a smaller canvas scales further down to fit.
pub fn letterbox_size([h, w]: [u32; 2], [ih, iw]: [u32; 2], limits: Option<[u32; 2]>) -> [u32; 2] {
    let (hf, wf) = (f64::from(h.max(1)), f64::from(w.max(1)));
    let mut scale = (f64::from(ih) / hf).min(f64::from(iw) / wf);
    if let Some([short, long]) = limits {
        scale = scale
            .min(f64::from(long) / hf.max(wf))
            .min(f64::from(short) / hf.min(wf));
    }
    let side = |v: u32, max: u32| ((f64::from(v) * scale + 0.5) as u32).clamp(1, max);
    [side(h, ih), side(w, iw)]
}

/// Of several letterbox `canvases` (`[height, width]` each), the index of the one an `[h, w]`
/// image is served in: the one where its [`letterbox_size`] is largest, i.e. where it is shrunk
/// least — with the official limits and an 800×1333 and a 1333×800 canvas, a landscape image
/// lands in the first and a portrait one in the second, both at the official scale. Ties go to
/// the smaller canvas (less padding to compute), then to the earlier one. 0 when `canvases` is
/// empty.
pub fn pick_canvas(hw: [u32; 2], canvases: &[[u32; 2]], limits: Option<[u32; 2]>) -> usize {
    let area = |[a, b]: [u32; 2]| u64::from(a) * u64::from(b);
    let mut best = 0;
    for (i, &c) in canvases.iter().enumerate().skip(1) {
        let (got, had) = (
            area(letterbox_size(hw, c, limits)),
            area(letterbox_size(hw, canvases[best], limits)),
        );
        if got > had || (got == had && area(c) < area(canvases[best])) {
            best = i;
        }
    }
    best
}

/// Letterboxes the packed RGB8 `src` (`width`×`height`) into an `out_w`×`out_h` canvas: resized
/// keeping its aspect ratio to [`letterbox_size`] (bilinear convolution, scale capped by
/// `limits` `[short, long]` when given), placed top-left, the rest zero. Returns the canvas and
/// the image's `[height, width]` inside it.
pub fn letterbox_rgb(
    src: &[u8],
    [width, height]: [u32; 2],
    [out_w, out_h]: [u32; 2],
    limits: Option<[u32; 2]>,
    resizer: &mut fr::Resizer,
) -> Result<(Vec<u8>, [u32; 2]), Error> {
    let [vh, vw] = letterbox_size([height, width], [out_h, out_w], limits);
    let inner = resize_rgb(src, [width, height], None, [vw, vh], resizer)?;
    Ok((place_top_left(inner, [vw, vh], [out_w, out_h]), [vh, vw]))
}

/// The packed RGB8 `img` (`width`×`height`) top-left in a zero `out_w`×`out_h` canvas (at least
/// as large on both sides); `img` itself when it already fills it.
pub fn place_top_left(
    img: Vec<u8>,
    [width, height]: [u32; 2],
    [out_w, out_h]: [u32; 2],
) -> Vec<u8> {
    if [width, height] == [out_w, out_h] {
        return img;
    }
    let (row, out_row) = (width as usize * 3, out_w as usize * 3);
    let mut canvas = vec![0u8; out_row * out_h as usize];
    for (dst, line) in canvas.chunks_exact_mut(out_row).zip(img.chunks_exact(row)) {
        dst[..row].copy_from_slice(line);
    }
    canvas
}

/// `HEIGHTxWIDTH` (e.g. `800x1333`, `x` or `X`) → `[h, w]`: the input-size flags of
/// codetr-export, codetr-serve and codetr-train validate.
pub fn parse_hw(s: &str) -> std::result::Result<[u32; 2], String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not HxW: height x width, e.g. 800x1333"))?;
    let side = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|e| format!("{v:?} in {s:?}: {e}"))
    };
    Ok([side(h)?, side(w)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: DynamicImage, f: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, f).expect("encode");
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
            Err(Error::TooManyPixels { pixels, .. }) => assert_eq!(pixels, 10_000_000_000),
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
        assert!(matches!(decode(b"", 10), Err(Error::InvalidImage(_))));
        assert!(matches!(
            decode(b"hello, I am a JPEG", 10),
            Err(Error::InvalidImage(_))
        ));
        assert!(matches!(
            decode(b"GIF89a\x01\x00\x01\x00", 10),
            Err(Error::UnsupportedImage(_))
        ));
        let jpg = encode(
            DynamicImage::ImageRgb8(image::RgbImage::new(64, 64)),
            ImageFormat::Jpeg,
        );
        assert!(matches!(
            decode(&jpg[..jpg.len() / 3], 1 << 20),
            Err(Error::InvalidImage(_))
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
    fn resize_matches_size_keeps_flat_colour_and_crops() {
        let flat = [10u8, 20, 30].repeat(60);
        let mut r = fr::Resizer::new();
        let out = resize_rgb(&flat, [10, 6], None, [4, 4], &mut r).unwrap();
        assert_eq!(out, [10u8, 20, 30].repeat(16));
        // the whole image at its own size: the pixels themselves, also through the resizer
        let img: Vec<u8> = (0..10 * 6 * 3).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(
            resize_rgb(&img, [10, 6], None, [10, 6], &mut r).unwrap(),
            img
        );
        let full = Some([0.0, 0.0, 10.0, 6.0]);
        assert_eq!(
            resize_rgb(&img, [10, 6], full, [10, 6], &mut r).unwrap(),
            img
        );
        // a crop of the left half at its own size is that half
        let half = resize_rgb(&img, [10, 6], Some([0.0, 0.0, 5.0, 6.0]), [5, 6], &mut r).unwrap();
        let want: Vec<u8> = img.chunks(30).flat_map(|row| row[..15].to_vec()).collect();
        assert_eq!(half, want);
        assert!(matches!(
            resize_rgb(&img[..5], [10, 6], None, [4, 4], &mut r),
            Err(Error::Resize(_))
        ));
    }

    /// The official test pipeline's keep-ratio resize, `Resize(scale=(1333, 800))`: these are
    /// mmcv 2.1's `rescale_size((w, h), (1333, 800))`, printed in the reference venv, as
    /// [h, w]. In a 1333² canvas the limits alone decide; a smaller canvas scales further.
    #[test]
    fn letterbox_limits_give_the_official_rescale_size() {
        let official = Some([800, 1333]);
        for ([w, h], [ow, oh]) in [
            ([640, 480], [1067, 800]),
            ([480, 640], [800, 1067]),
            ([333, 500], [800, 1201]),
            ([1000, 1], [1333, 1]),
            ([1920, 1080], [1333, 750]),
            ([500, 2000], [333, 1333]),
            ([800, 800], [800, 800]),
        ] {
            assert_eq!(
                letterbox_size([h, w], [1333, 1333], official),
                [oh, ow],
                "{w}x{h}"
            );
        }
        // an 800² canvas is the old behaviour (the canvas is the tighter cap)
        assert_eq!(letterbox_size([480, 640], [800, 800], official), [600, 800]);
        assert_eq!(
            letterbox_size([480, 640], [800, 800], None),
            letterbox_size([480, 640], [800, 800], official)
        );
        let src = vec![7u8; 10 * 20 * 3]; // 10 wide, 20 high
        let (out, valid) = letterbox_rgb(
            &src,
            [10, 20],
            [64, 64],
            Some([8, 12]),
            &mut fr::Resizer::new(),
        )
        .unwrap();
        assert_eq!(valid, [12, 6], "long side capped at 12, short at 8");
        assert_eq!(out.len(), 64 * 64 * 3);
    }

    /// Each image goes to the canvas that keeps it largest: the official scale for both
    /// orientations with a landscape and a portrait canvas; ties to the smaller canvas.
    #[test]
    fn pick_canvas_keeps_each_image_at_its_largest() {
        let official = Some([800, 1333]);
        let both = [[800, 1333], [1333, 800]];
        for ([h, w], want) in [
            ([480, 640], 0),
            ([640, 480], 1),
            ([1080, 1920], 0),
            ([2000, 500], 1),
            ([1, 1000], 0),
        ] {
            let i = pick_canvas([h, w], &both, official);
            assert_eq!(i, want, "{h}x{w}");
            // … and there it has the official size (a 1333² canvas decides by the limits alone)
            assert_eq!(
                letterbox_size([h, w], both[i], official),
                letterbox_size([h, w], [1333, 1333], official),
                "{h}x{w}"
            );
        }
        // A square image fits both the same: the first, of equal area.
        assert_eq!(pick_canvas([600, 600], &both, official), 0);
        // Equal fit, smaller canvas: capped at 64, a 64² image is 64² in both, and the 64²
        // canvas is cheaper.
        assert_eq!(
            pick_canvas([64, 64], &[[128, 128], [64, 64]], Some([64, 64])),
            1
        );
        // Without limits the larger canvas wins when it fits the image larger.
        assert_eq!(pick_canvas([64, 64], &[[64, 64], [128, 128]], None), 1);
        assert_eq!(pick_canvas([5, 5], &[], None), 0);
        assert_eq!(pick_canvas([5, 5], &[[32, 32]], None), 0);
    }

    #[test]
    fn letterbox_keeps_the_ratio_and_places_the_image_top_left() {
        // mmcv rescale_size: 640×480 into 800² → scale 1.25 → 800×600 (w × h)
        assert_eq!(letterbox_size([480, 640], [800, 800], None), [600, 800]);
        assert_eq!(letterbox_size([800, 800], [800, 800], None), [800, 800]);
        // 1×1000 stays at least one pixel high
        assert_eq!(letterbox_size([1, 1000], [64, 64], None), [1, 64]);
        assert_eq!(letterbox_size([333, 500], [800, 1333], None), [800, 1201]);
        let src: Vec<u8> = (0..4 * 2 * 3).map(|i| i as u8 * 10).collect(); // 4 wide, 2 high
        let (out, valid) =
            letterbox_rgb(&src, [4, 2], [8, 8], None, &mut fr::Resizer::new()).unwrap();
        assert_eq!(valid, [4, 8]);
        assert_eq!(out.len(), 8 * 8 * 3);
        assert!(
            out[4 * 8 * 3..].iter().all(|&p| p == 0),
            "rows below the image are padding"
        );
        assert!(out[..4 * 8 * 3].iter().any(|&p| p != 0));
        // an image already at the canvas size is passed through
        let (same, v) = letterbox_rgb(&src, [4, 2], [4, 2], None, &mut fr::Resizer::new()).unwrap();
        assert_eq!((same, v), (src.clone(), [2, 4]));
        // a portrait image pads on the right
        let tall: Vec<u8> = vec![200; 2 * 4 * 3]; // 2 wide, 4 high
        let (out, valid) =
            letterbox_rgb(&tall, [2, 4], [8, 8], None, &mut fr::Resizer::new()).unwrap();
        assert_eq!(valid, [8, 4]);
        for row in out.chunks_exact(8 * 3) {
            assert!(row[..4 * 3].iter().all(|&p| p == 200) && row[4 * 3..].iter().all(|&p| p == 0));
        }
    }
}
