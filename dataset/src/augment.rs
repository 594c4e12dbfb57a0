//! Training-time augmentation and the resize every batch goes through (a stretch to the square,
//! or to the letterboxed region of it).
//!
//! Order per image: random crop → horizontal flip → stretch-resize to the batch's square size
//! (one fast_image_resize pass does crop+resize) → photometric jitter. Every random choice
//! comes from the `Rng` it is given, so a batch is a pure function of (seed, epoch, index).

use fast_image_resize as fr;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Augmentation settings (all probabilities in [0, 1]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Probability of a horizontal flip.
    pub hflip_prob: f32,
    /// Probability of a random crop.
    pub crop_prob: f32,
    /// The crop's side is drawn in [crop_min_scale, 1] × the image side (per axis).
    pub crop_min_scale: f32,
    /// A cropped box is dropped if its width or height (original pixels) is below this.
    pub min_box_size: f32,
    /// A cropped box is dropped if less than this fraction of its area stays in the crop.
    pub min_visible_fraction: f32,
    /// Brightness factor drawn in [1-b, 1+b].
    pub brightness: f32,
    /// Contrast factor drawn in [1-c, 1+c] (around the image's mean grey).
    pub contrast: f32,
    /// Saturation factor drawn in [1-s, 1+s] (around each pixel's grey).
    pub saturation: f32,
    /// Probability of applying the photometric jitter at all.
    pub jitter_prob: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            hflip_prob: 0.5,
            crop_prob: 0.5,
            crop_min_scale: 0.6,
            min_box_size: 2.0,
            min_visible_fraction: 0.3,
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.2,
            jitter_prob: 0.8,
        }
    }
}

impl AugmentConfig {
    pub fn validate(&self) -> Result<()> {
        let probs = [
            ("hflip_prob", self.hflip_prob),
            ("crop_prob", self.crop_prob),
            ("jitter_prob", self.jitter_prob),
            ("min_visible_fraction", self.min_visible_fraction),
        ];
        for (name, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::InvalidArgument {
                    what: "augment config",
                    message: format!("{name} must be in [0, 1], got {p}"),
                });
            }
        }
        if !(self.crop_min_scale > 0.0 && self.crop_min_scale <= 1.0) {
            return Err(Error::InvalidArgument {
                what: "augment config",
                message: format!(
                    "crop_min_scale must be in (0, 1], got {}",
                    self.crop_min_scale
                ),
            });
        }
        for (name, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::InvalidArgument {
                    what: "augment config",
                    message: format!("{name} must be in [0, 1), got {v}"),
                });
            }
        }
        if self.min_box_size.is_nan() || self.min_box_size < 0.0 {
            return Err(Error::InvalidArgument {
                what: "augment config",
                message: "min_box_size must be >= 0".into(),
            });
        }
        Ok(())
    }
}

/// An image with its boxes, in the image's own pixel frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image_id: u64,
    /// (height, width) of the decoded, EXIF-oriented original.
    pub orig_size: [u32; 2],
    /// `[x1, y1, x2, y2]` pixels.
    pub boxes: Vec<[f32; 4]>,
    pub labels: Vec<usize>,
}

/// What to do with one image: the crop window in source pixels and the flip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// `[left, top, width, height]` of the source region, pixels.
    pub crop: [f64; 4],
    pub hflip: bool,
}

impl Geometry {
    pub fn identity(width: u32, height: u32) -> Self {
        Self {
            crop: [0.0, 0.0, f64::from(width), f64::from(height)],
            hflip: false,
        }
    }

    /// Draws a random crop/flip for a `width`×`height` image.
    pub fn random(width: u32, height: u32, cfg: &AugmentConfig, rng: &mut Rng) -> Self {
        let (w, h) = (f64::from(width), f64::from(height));
        let mut g = Self::identity(width, height);
        if rng.chance(cfg.crop_prob) {
            let min = f64::from(cfg.crop_min_scale);
            let cw = (w * (min + (1.0 - min) * rng.f64())).round().clamp(1.0, w);
            let ch = (h * (min + (1.0 - min) * rng.f64())).round().clamp(1.0, h);
            let left = ((w - cw) * rng.f64()).round();
            let top = ((h - ch) * rng.f64()).round();
            g.crop = [left, top, cw, ch];
        }
        g.hflip = rng.chance(cfg.hflip_prob);
        g
    }
}

/// Maps the sample's boxes through `geom` into an `out_w`×`out_h` output frame, dropping boxes
/// that fall (mostly) outside the crop or become smaller than `min_box_size` source pixels.
/// Returns boxes as `[x1, y1, x2, y2]` in output pixels.
pub fn transform_boxes(
    sample: &Sample,
    geom: &Geometry,
    [out_w, out_h]: [u32; 2],
    min_box_size: f32,
    min_visible_fraction: f32,
) -> (Vec<[f32; 4]>, Vec<usize>) {
    let [left, top, cw, ch] = geom.crop.map(|v| v as f32);
    let (sx, sy) = (out_w as f32 / cw, out_h as f32 / ch);
    let mut boxes = Vec::with_capacity(sample.boxes.len());
    let mut labels = Vec::with_capacity(sample.labels.len());
    for (b, &label) in sample.boxes.iter().zip(&sample.labels) {
        let area = (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0);
        let x1 = (b[0] - left).clamp(0.0, cw);
        let y1 = (b[1] - top).clamp(0.0, ch);
        let x2 = (b[2] - left).clamp(0.0, cw);
        let y2 = (b[3] - top).clamp(0.0, ch);
        let (w, h) = (x2 - x1, y2 - y1);
        if w < min_box_size.max(f32::MIN_POSITIVE) || h < min_box_size.max(f32::MIN_POSITIVE) {
            continue;
        }
        if area > 0.0 && w * h < min_visible_fraction * area {
            continue;
        }
        let (mut ox1, mut ox2) = (x1 * sx, x2 * sx);
        if geom.hflip {
            (ox1, ox2) = (out_w as f32 - ox2, out_w as f32 - ox1);
        }
        boxes.push([ox1, y1 * sy, ox2, y2 * sy]);
        labels.push(label);
    }
    (boxes, labels)
}

/// Crops `geom.crop` out of an RGB image and stretch-resizes it to `out_w`×`out_h` with the
/// contract's resize (`codetr_model::preprocess::resize_rgb`, as served), flipping if asked.
/// Returns HWC RGB bytes.
pub fn crop_resize_rgb(
    src: &image::RgbImage,
    geom: &Geometry,
    out_w: u32,
    out_h: u32,
    resizer: &mut fr::Resizer,
) -> Result<Vec<u8>> {
    let mut out = codetr_model::preprocess::resize_rgb(
        src.as_raw(),
        [src.width(), src.height()],
        Some(geom.crop),
        [out_w, out_h],
        resizer,
    )
    .map_err(|e| Error::Loader(e.to_string()))?;
    if geom.hflip {
        let row = out_w as usize * 3;
        for line in out.chunks_exact_mut(row) {
            let (mut i, mut j) = (0usize, out_w as usize - 1);
            while i < j {
                for c in 0..3 {
                    line.swap(i * 3 + c, j * 3 + c);
                }
                i += 1;
                j -= 1;
            }
        }
    }
    Ok(out)
}

/// Random brightness, contrast and saturation on HWC RGB bytes, in random order.
pub fn photometric_jitter(pixels: &mut [u8], cfg: &AugmentConfig, rng: &mut Rng) {
    if !rng.chance(cfg.jitter_prob) {
        return;
    }
    let b = rng.uniform(1.0 - cfg.brightness, 1.0 + cfg.brightness);
    let c = rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast);
    let s = rng.uniform(1.0 - cfg.saturation, 1.0 + cfg.saturation);
    let mut order = [0u8, 1, 2];
    rng.shuffle(&mut order);
    let grey =
        |p: &[u8]| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
    for op in order {
        match op {
            0 => {
                let lut: Vec<u8> = (0..256)
                    .map(|v| (v as f32 * b).round().clamp(0.0, 255.0) as u8)
                    .collect();
                pixels.iter_mut().for_each(|p| *p = lut[*p as usize]);
            }
            1 => {
                let n = (pixels.len() / 3).max(1) as f32;
                let mean = pixels.chunks_exact(3).map(grey).sum::<f32>() / n;
                let lut: Vec<u8> = (0..256)
                    .map(|v| (mean + (v as f32 - mean) * c).round().clamp(0.0, 255.0) as u8)
                    .collect();
                pixels.iter_mut().for_each(|p| *p = lut[*p as usize]);
            }
            _ => {
                for p in pixels.chunks_exact_mut(3) {
                    let g = grey(p);
                    for v in p.iter_mut() {
                        *v = (g + (f32::from(*v) - g) * s).round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(boxes: Vec<[f32; 4]>) -> Sample {
        let n = boxes.len();
        Sample {
            image_id: 1,
            orig_size: [100, 200],
            boxes,
            labels: (0..n).collect(),
        }
    }

    #[test]
    fn identity_geometry_scales_boxes_to_the_square() {
        let s = sample(vec![[20.0, 10.0, 60.0, 50.0]]);
        let g = Geometry::identity(200, 100);
        let (b, l) = transform_boxes(&s, &g, [100, 100], 2.0, 0.3);
        assert_eq!(l, vec![0]);
        assert_eq!(b, vec![[10.0, 10.0, 30.0, 50.0]]);
    }

    #[test]
    fn flip_mirrors_boxes() {
        let s = sample(vec![[0.0, 0.0, 50.0, 100.0]]);
        let g = Geometry {
            crop: [0.0, 0.0, 200.0, 100.0],
            hflip: true,
        };
        let (b, _) = transform_boxes(&s, &g, [100, 100], 2.0, 0.3);
        assert_eq!(b, vec![[75.0, 0.0, 100.0, 100.0]]);
    }

    #[test]
    fn crop_clips_and_drops_tiny_or_mostly_hidden_boxes() {
        let s = sample(vec![
            [10.0, 10.0, 30.0, 30.0],   // fully inside the crop
            [0.0, 0.0, 12.0, 12.0],     // keeps a 2x2 corner: 4/144 visible → dropped
            [90.0, 40.0, 140.0, 60.0],  // half visible → kept, clipped
            [150.0, 50.0, 160.0, 60.0], // outside → dropped
        ]);
        let g = Geometry {
            crop: [10.0, 10.0, 100.0, 80.0],
            hflip: false,
        };
        let (b, l) = transform_boxes(&s, &g, [100, 100], 2.0, 0.3);
        assert_eq!(l, vec![0, 2]);
        assert_eq!(b[0], [0.0, 0.0, 20.0, 25.0]);
        assert_eq!(b[1], [80.0, 37.5, 100.0, 62.5]);
    }

    #[test]
    fn resize_crop_flip_moves_pixels_where_boxes_go() {
        // A white 10x10 square at (20..30, 40..50) of a black 100x100 image.
        let mut img = image::RgbImage::new(100, 100);
        for y in 40..50 {
            for x in 20..30 {
                img.put_pixel(x, y, image::Rgb([255, 255, 255]));
            }
        }
        let g = Geometry {
            crop: [0.0, 0.0, 100.0, 100.0],
            hflip: true,
        };
        let mut r = fr::Resizer::new();
        let out = crop_resize_rgb(&img, &g, 50, 50, &mut r).unwrap();
        let px = |x: usize, y: usize| out[(y * 50 + x) * 3];
        // Flipped square covers x in [35, 40), y in [20, 25) of the 50x50 output.
        assert!(px(37, 22) > 200);
        assert!(px(12, 22) < 50);
        let s = sample(vec![[20.0, 40.0, 30.0, 50.0]]);
        let (b, _) = transform_boxes(&s, &g, [50, 50], 1.0, 0.3);
        assert_eq!(b[0], [35.0, 20.0, 40.0, 25.0]);
    }

    #[test]
    fn jitter_is_seeded() {
        let base: Vec<u8> = (0..300).map(|i| (i % 256) as u8).collect();
        let cfg = AugmentConfig {
            jitter_prob: 1.0,
            ..Default::default()
        };
        let (mut a, mut b) = (base.clone(), base.clone());
        photometric_jitter(&mut a, &cfg, &mut Rng::new(3));
        photometric_jitter(&mut b, &cfg, &mut Rng::new(3));
        assert_eq!(a, b);
        assert_ne!(a, base);
    }

    #[test]
    fn random_geometry_stays_inside_the_image() {
        let cfg = AugmentConfig {
            crop_prob: 1.0,
            ..Default::default()
        };
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let g = Geometry::random(37, 91, &cfg, &mut rng);
            let [l, t, w, h] = g.crop;
            assert!(l >= 0.0 && t >= 0.0 && w >= 1.0 && h >= 1.0);
            assert!(l + w <= 37.0 && t + h <= 91.0);
        }
        assert!(
            AugmentConfig {
                hflip_prob: 1.5,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
