//! Host-side RoIAlign "plan" for autograd-friendly RoIAlign inside Burn.
//!
//! Reproduces mmcv's `RoIAlign(output_size, sampling_ratio, aligned)` with average pooling
//! (the op behind mmdet's `SingleRoIExtractor`). Every output bin of every RoI is a fixed
//! linear combination of feature rows, so the host computes the rows and weights once
//! ([`roi_align_plan`]) and the device evaluates
//! `(features_flat.select(0, index) * weight).reshape([R * P * P, taps, C]).sum_dim(1)`,
//! which is differentiable w.r.t. the features.
//!
//! Feature layout: one row-major `[rows, C]` matrix; the row of (image `b`, level `l`, `y`, `x`)
//! is `b * total_tokens + level.start + y * level.w + x`.
//!
//! Deviations from mmcv (both only matter for degenerate RoIs):
//! * the adaptive grid (`sampling_ratio == 0`) is at least 1 sample per axis; mmcv's
//!   `ceil(roi_size / out)` is 0 for an empty RoI, which makes mmcv return 0 there;
//! * samples per bin axis are capped at [`MAX_SAMPLES_PER_AXIS`] to bound memory.
//!
//! Sample points that are NaN are treated as outside the map (mmcv would hit UB).

use std::fmt;

/// Cap on samples per bin along each axis (adaptive or explicit `sampling_ratio`).
/// mmcv has no cap; with it a bin has at most `4 * 64 * 64` taps.
pub const MAX_SAMPLES_PER_AXIS: usize = 64;

/// One feature level of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// Height in feature cells.
    pub h: usize,
    /// Width in feature cells.
    pub w: usize,
    /// Input pixels per feature cell (`spatial_scale = 1 / stride`).
    pub stride: f32,
    /// Token offset of the level within an image.
    pub start: usize,
}

/// One region of interest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roi {
    /// Image index in the batch.
    pub batch: usize,
    /// Index into the level list (chosen by the caller).
    pub level: usize,
    /// `[x1, y1, x2, y2]` in input-image pixels.
    pub bbox: [f32; 4],
}

/// Gather-and-weight description of RoIAlign.
///
/// `index.len() == weight.len() == rois * out * out * taps`, ordered roi, bin row `ph`,
/// bin column `pw`, tap. Unused taps are `(0, 0.0)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoiAlignPlan {
    /// Taps per bin (same for every bin).
    pub taps: usize,
    /// Flat feature-row index of each tap.
    pub index: Vec<i64>,
    /// Weight of each tap (bilinear weight / samples per bin).
    pub weight: Vec<f32>,
}

impl RoiAlignPlan {
    /// Checks that every index addresses a row of a `[rows, C]` feature matrix
    /// (the plan itself does not know the batch size).
    pub fn check_rows(&self, rows: usize) -> Result<(), RoiAlignError> {
        match self
            .index
            .iter()
            .find(|&&i| usize::try_from(i).map_or(true, |i| i >= rows))
        {
            Some(&index) => Err(RoiAlignError::RowOutOfRange { index, rows }),
            None => Ok(()),
        }
    }
}

/// Why a plan or an evaluation could not be built.
#[derive(Debug, Clone, PartialEq)]
pub enum RoiAlignError {
    /// A RoI names a level that does not exist.
    LevelOutOfRange {
        roi: usize,
        level: usize,
        levels: usize,
    },
    /// A RoI names an image that does not exist.
    BatchOutOfRange {
        roi: usize,
        batch: usize,
        images: usize,
    },
    /// A level has an empty map, a bad stride, or does not fit in `total_tokens`.
    BadLevel { level: usize, reason: &'static str },
    /// A plan index is negative or past the feature rows.
    RowOutOfRange { index: i64, rows: usize },
    /// Inconsistent buffer sizes.
    BadShape(&'static str),
    /// A size or row index overflows.
    Overflow,
}

impl fmt::Display for RoiAlignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LevelOutOfRange { roi, level, levels } => {
                write!(f, "roi {roi}: level {level} out of range ({levels} levels)")
            }
            Self::BatchOutOfRange { roi, batch, images } => {
                write!(f, "roi {roi}: batch {batch} out of range ({images} images)")
            }
            Self::BadLevel { level, reason } => write!(f, "level {level}: {reason}"),
            Self::RowOutOfRange { index, rows } => {
                write!(f, "plan index {index} out of range ({rows} rows)")
            }
            Self::BadShape(what) => write!(f, "bad shape: {what}"),
            Self::Overflow => write!(f, "size overflow"),
        }
    }
}

impl std::error::Error for RoiAlignError {}

/// Checks every level: non-empty map, finite positive stride, fits in `total_tokens`.
fn validate_levels(levels: &[Level], total_tokens: usize) -> Result<(), RoiAlignError> {
    for (i, l) in levels.iter().enumerate() {
        let bad = |reason| Err(RoiAlignError::BadLevel { level: i, reason });
        if l.h == 0 || l.w == 0 {
            return bad("empty feature map");
        }
        if !(l.stride.is_finite() && l.stride > 0.0) {
            return bad("stride must be finite and positive");
        }
        let end =
            l.h.checked_mul(l.w)
                .and_then(|n| n.checked_add(l.start))
                .ok_or(RoiAlignError::Overflow)?;
        if end > total_tokens {
            return bad("level extends past total_tokens");
        }
    }
    Ok(())
}

/// Samples per bin along one axis: explicit ratio, or `ceil(extent / out)`, in `1..=cap`.
fn grid_size(sampling_ratio: usize, extent: f32, out: usize) -> usize {
    if sampling_ratio > 0 {
        return sampling_ratio.min(MAX_SAMPLES_PER_AXIS);
    }
    let g = (extent / out as f32).ceil();
    if g.is_nan() || g < 1.0 {
        1
    } else if g >= MAX_SAMPLES_PER_AXIS as f32 {
        MAX_SAMPLES_PER_AXIS
    } else {
        g as usize
    }
}

/// Per-RoI sampling geometry in feature-cell coordinates.
struct Geometry {
    start_h: f32,
    start_w: f32,
    bin_h: f32,
    bin_w: f32,
    grid_h: usize,
    grid_w: usize,
    count: f32,
}

impl Geometry {
    fn new(bbox: [f32; 4], stride: f32, out: usize, sampling_ratio: usize, aligned: bool) -> Self {
        let scale = 1.0 / stride;
        let offset = if aligned { 0.5 } else { 0.0 };
        let start_w = bbox[0] * scale - offset;
        let start_h = bbox[1] * scale - offset;
        let mut roi_w = bbox[2] * scale - offset - start_w;
        let mut roi_h = bbox[3] * scale - offset - start_h;
        if !aligned {
            roi_w = roi_w.max(1.0);
            roi_h = roi_h.max(1.0);
        }
        let grid_h = grid_size(sampling_ratio, roi_h, out);
        let grid_w = grid_size(sampling_ratio, roi_w, out);
        Self {
            start_h,
            start_w,
            bin_h: roi_h / out as f32,
            bin_w: roi_w / out as f32,
            grid_h,
            grid_w,
            count: (grid_h * grid_w).max(1) as f32,
        }
    }
}

/// Low/high cell and fractional offset along one axis of size `size >= 1`, for `v >= 0`.
fn axis_taps(v: f32, size: usize) -> (usize, usize, f32) {
    let low = v.floor() as usize;
    if low + 1 >= size {
        (size - 1, size - 1, 0.0)
    } else {
        (low, low + 1, v - low as f32)
    }
}

/// mmcv's bilinear interpolation as `(y, x, weight)` taps; `None` outside `[-1, size]`.
fn bilinear_taps(y: f32, x: f32, h: usize, w: usize) -> Option<[(usize, usize, f32); 4]> {
    if y.is_nan() || x.is_nan() || y < -1.0 || y > h as f32 || x < -1.0 || x > w as f32 {
        return None;
    }
    let (y0, y1, ly) = axis_taps(y.max(0.0), h);
    let (x0, x1, lx) = axis_taps(x.max(0.0), w);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    Some([
        (y0, x0, hy * hx),
        (y0, x1, hy * lx),
        (y1, x0, ly * hx),
        (y1, x1, ly * lx),
    ])
}

/// Builds the RoIAlign plan (mmcv semantics, average pooling) for `rois` on `levels`.
///
/// `total_tokens` is the number of feature rows per image. Errors on an unknown level,
/// an invalid level, or sizes that overflow. The batch size is unknown here: check the
/// result with [`RoiAlignPlan::check_rows`] if `roi.batch` is not trusted.
pub fn roi_align_plan(
    rois: &[Roi],
    levels: &[Level],
    total_tokens: usize,
    out: usize,
    sampling_ratio: usize,
    aligned: bool,
) -> Result<RoiAlignPlan, RoiAlignError> {
    validate_levels(levels, total_tokens)?;
    let mut geoms = Vec::with_capacity(rois.len());
    for (i, roi) in rois.iter().enumerate() {
        let level = levels
            .get(roi.level)
            .ok_or(RoiAlignError::LevelOutOfRange {
                roi: i,
                level: roi.level,
                levels: levels.len(),
            })?;
        // Last row of this image must fit in i64 (and usize).
        let base = roi
            .batch
            .checked_mul(total_tokens)
            .and_then(|b| b.checked_add(level.start))
            .ok_or(RoiAlignError::Overflow)?;
        let last = base
            .checked_add(level.h * level.w)
            .ok_or(RoiAlignError::Overflow)?;
        i64::try_from(last).map_err(|_| RoiAlignError::Overflow)?;
        geoms.push((
            base,
            *level,
            Geometry::new(roi.bbox, level.stride, out, sampling_ratio, aligned),
        ));
    }
    let samples = geoms
        .iter()
        .map(|(_, _, g)| g.grid_h * g.grid_w)
        .max()
        .unwrap_or(1);
    let taps = 4 * samples.max(1);
    let len = out
        .checked_mul(out)
        .and_then(|n| n.checked_mul(rois.len()))
        .and_then(|n| n.checked_mul(taps))
        .ok_or(RoiAlignError::Overflow)?;
    let mut index = vec![0i64; len];
    let mut weight = vec![0f32; len];
    if len == 0 {
        return Ok(RoiAlignPlan {
            taps,
            index,
            weight,
        });
    }
    let mut bins = index
        .chunks_exact_mut(taps)
        .zip(weight.chunks_exact_mut(taps));
    for (base, level, g) in &geoms {
        for ph in 0..out {
            for pw in 0..out {
                let Some((bin_index, bin_weight)) = bins.next() else {
                    return Err(RoiAlignError::Overflow);
                };
                let mut k = 0;
                for iy in 0..g.grid_h {
                    let y = g.start_h
                        + ph as f32 * g.bin_h
                        + (iy as f32 + 0.5) * g.bin_h / g.grid_h as f32;
                    for ix in 0..g.grid_w {
                        let x = g.start_w
                            + pw as f32 * g.bin_w
                            + (ix as f32 + 0.5) * g.bin_w / g.grid_w as f32;
                        let Some(four) = bilinear_taps(y, x, level.h, level.w) else {
                            continue;
                        };
                        for (yy, xx, w) in four {
                            // Cannot overflow: checked against `last` above.
                            bin_index[k] = (base + yy * level.w + xx) as i64;
                            bin_weight[k] = w / g.count;
                            k += 1;
                        }
                    }
                }
            }
        }
    }
    Ok(RoiAlignPlan {
        taps,
        index,
        weight,
    })
}

/// Host evaluation of a plan (what the Burn side computes): `features` is `[rows, channels]`
/// row-major; returns `[R, out, out, channels]` row-major.
pub fn apply_plan(
    plan: &RoiAlignPlan,
    features: &[f32],
    channels: usize,
) -> Result<Vec<f32>, RoiAlignError> {
    if channels == 0 {
        return Err(RoiAlignError::BadShape("channels must be positive"));
    }
    if !features.len().is_multiple_of(channels) {
        return Err(RoiAlignError::BadShape(
            "features not a multiple of channels",
        ));
    }
    if plan.index.len() != plan.weight.len() {
        return Err(RoiAlignError::BadShape("index and weight lengths differ"));
    }
    if plan.index.is_empty() {
        return Ok(Vec::new());
    }
    if plan.taps == 0 || !plan.index.len().is_multiple_of(plan.taps) {
        return Err(RoiAlignError::BadShape(
            "plan length not a multiple of taps",
        ));
    }
    plan.check_rows(features.len() / channels)?;
    let bins = plan.index.len() / plan.taps;
    let mut out = vec![0f32; bins * channels];
    for ((dst, idx), wts) in out
        .chunks_exact_mut(channels)
        .zip(plan.index.chunks_exact(plan.taps))
        .zip(plan.weight.chunks_exact(plan.taps))
    {
        for (&i, &w) in idx.iter().zip(wts) {
            // `i` is in range: checked by `check_rows`.
            let row = i as usize * channels;
            for (d, &f) in dst.iter_mut().zip(&features[row..row + channels]) {
                *d += f * w;
            }
        }
    }
    Ok(out)
}

/// One channel of one level of one image, as mmcv's `bilinear_interpolate` sees it.
struct Plane<'a> {
    data: &'a [f32],
    channels: usize,
    channel: usize,
    base: usize,
    height: i64,
    width: i64,
}

impl Plane<'_> {
    fn at(&self, y: i64, x: i64) -> f32 {
        let pos = (self.base as i64 + y * self.width + x) as usize;
        self.data
            .get(pos * self.channels + self.channel)
            .copied()
            .unwrap_or(0.0)
    }
}

/// Transcription of mmcv's `bilinear_interpolate`.
fn bilinear_interpolate(p: &Plane<'_>, mut y: f32, mut x: f32) -> f32 {
    let (height, width) = (p.height, p.width);
    // deal with cases that inverse elements are out of feature map boundary
    if y < -1.0 || y > height as f32 || x < -1.0 || x > width as f32 {
        return 0.0;
    }
    if y.is_nan() || x.is_nan() {
        return 0.0;
    }
    if y <= 0.0 {
        y = 0.0;
    }
    if x <= 0.0 {
        x = 0.0;
    }
    let mut y_low = y as i64;
    let mut x_low = x as i64;
    let y_high;
    let x_high;
    if y_low >= height - 1 {
        y_low = height - 1;
        y_high = y_low;
        y = y_low as f32;
    } else {
        y_high = y_low + 1;
    }
    if x_low >= width - 1 {
        x_low = width - 1;
        x_high = x_low;
        x = x_low as f32;
    } else {
        x_high = x_low + 1;
    }
    let ly = y - y_low as f32;
    let lx = x - x_low as f32;
    let hy = 1.0 - ly;
    let hx = 1.0 - lx;
    let v1 = p.at(y_low, x_low);
    let v2 = p.at(y_low, x_high);
    let v3 = p.at(y_high, x_low);
    let v4 = p.at(y_high, x_high);
    let (w1, w2, w3, w4) = (hy * hx, hy * lx, ly * hx, ly * lx);
    w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4
}

/// Reference RoIAlign: a direct transcription of mmcv's CPU `ROIAlignForward` (average
/// pooling), independent of the plan code. `features` is `[images * total_tokens, channels]`;
/// returns `[R, out, out, channels]` row-major. Same grid floor/cap as [`roi_align_plan`].
#[allow(clippy::too_many_arguments)]
pub fn roi_align_naive(
    features: &[f32],
    channels: usize,
    levels: &[Level],
    total_tokens: usize,
    rois: &[Roi],
    out: usize,
    sampling_ratio: usize,
    aligned: bool,
) -> Result<Vec<f32>, RoiAlignError> {
    if channels == 0 || total_tokens == 0 {
        return Err(RoiAlignError::BadShape(
            "channels and total_tokens must be positive",
        ));
    }
    let image_len = total_tokens
        .checked_mul(channels)
        .ok_or(RoiAlignError::Overflow)?;
    if !features.len().is_multiple_of(image_len) {
        return Err(RoiAlignError::BadShape(
            "features not a multiple of an image",
        ));
    }
    let images = features.len() / image_len;
    validate_levels(levels, total_tokens)?;
    let len = out
        .checked_mul(out)
        .and_then(|n| n.checked_mul(rois.len()))
        .and_then(|n| n.checked_mul(channels))
        .ok_or(RoiAlignError::Overflow)?;
    let mut output = vec![0f32; len];
    for (n, roi) in rois.iter().enumerate() {
        let Some(level) = levels.get(roi.level) else {
            return Err(RoiAlignError::LevelOutOfRange {
                roi: n,
                level: roi.level,
                levels: levels.len(),
            });
        };
        if roi.batch >= images {
            return Err(RoiAlignError::BatchOutOfRange {
                roi: n,
                batch: roi.batch,
                images,
            });
        }
        let spatial_scale = 1.0 / level.stride;
        let offset = if aligned { 0.5f32 } else { 0.0 };
        let roi_start_w = roi.bbox[0] * spatial_scale - offset;
        let roi_start_h = roi.bbox[1] * spatial_scale - offset;
        let roi_end_w = roi.bbox[2] * spatial_scale - offset;
        let roi_end_h = roi.bbox[3] * spatial_scale - offset;
        let mut roi_width = roi_end_w - roi_start_w;
        let mut roi_height = roi_end_h - roi_start_h;
        if !aligned {
            roi_width = roi_width.max(1.0);
            roi_height = roi_height.max(1.0);
        }
        let bin_size_h = roi_height / out as f32;
        let bin_size_w = roi_width / out as f32;
        let cap = MAX_SAMPLES_PER_AXIS as i64;
        // f32 -> i64 `as` saturates (NaN -> 0); then floor at 1 and cap.
        let roi_bin_grid_h = if sampling_ratio > 0 {
            sampling_ratio as i64
        } else {
            (roi_height / out as f32).ceil() as i64
        }
        .clamp(1, cap);
        let roi_bin_grid_w = if sampling_ratio > 0 {
            sampling_ratio as i64
        } else {
            (roi_width / out as f32).ceil() as i64
        }
        .clamp(1, cap);
        let count = (roi_bin_grid_h * roi_bin_grid_w).max(1) as f32;
        for c in 0..channels {
            let plane = Plane {
                data: features,
                channels,
                channel: c,
                base: roi.batch * total_tokens + level.start,
                height: level.h as i64,
                width: level.w as i64,
            };
            for ph in 0..out {
                for pw in 0..out {
                    let mut output_val = 0.0f32;
                    for iy in 0..roi_bin_grid_h {
                        let y = roi_start_h
                            + ph as f32 * bin_size_h
                            + (iy as f32 + 0.5) * bin_size_h / roi_bin_grid_h as f32;
                        for ix in 0..roi_bin_grid_w {
                            let x = roi_start_w
                                + pw as f32 * bin_size_w
                                + (ix as f32 + 0.5) * bin_size_w / roi_bin_grid_w as f32;
                            output_val += bilinear_interpolate(&plane, y, x);
                        }
                    }
                    output[((n * out + ph) * out + pw) * channels + c] = output_val / count;
                }
            }
        }
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    use codetr_data::rng::Rng;

    /// 3 levels of a 40×64 image (strides 4, 8, 16) → tokens 160 + 40 + 12.
    fn levels3() -> (Vec<Level>, usize) {
        let dims = [(10, 16, 4.0), (5, 8, 8.0), (3, 4, 16.0)];
        let mut start = 0;
        let mut levels = Vec::new();
        for (h, w, stride) in dims {
            levels.push(Level {
                h,
                w,
                stride,
                start,
            });
            start += h * w;
        }
        (levels, start)
    }

    fn random_rois(rng: &mut Rng, n: usize, images: usize, levels: usize) -> Vec<Roi> {
        (0..n)
            .map(|i| {
                let (cx, cy) = (rng.uniform(-20.0, 84.0), rng.uniform(-20.0, 60.0));
                let (w, h) = match i % 6 {
                    0 => (rng.uniform(1.0, 30.0), rng.uniform(1.0, 30.0)),
                    1 => (0.0, rng.uniform(0.0, 20.0)),
                    2 => (rng.uniform(0.0, 20.0), 0.0),
                    3 => (rng.uniform(100.0, 400.0), rng.uniform(100.0, 400.0)),
                    4 => (rng.uniform(0.0, 3.0), rng.uniform(0.0, 3.0)),
                    _ => (rng.uniform(5.0, 80.0), rng.uniform(5.0, 80.0)),
                };
                let (cx, cy) = if i % 11 == 0 {
                    (cx + 500.0, cy - 500.0) // fully outside
                } else {
                    (cx, cy)
                };
                Roi {
                    batch: rng.below(images),
                    level: rng.below(levels),
                    bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                }
            })
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
        }
    }

    #[test]
    fn plan_matches_naive_random() {
        let (levels, total) = levels3();
        let (images, channels) = (2, 5);
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        let features: Vec<f32> = (0..images * total * channels)
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect();
        let rois = random_rois(&mut rng, 200, images, levels.len());
        let mut checked = 0;
        for aligned in [true, false] {
            for sr in [0, 2] {
                for out in [7, 3] {
                    let plan = roi_align_plan(&rois, &levels, total, out, sr, aligned).unwrap();
                    assert_eq!(plan.index.len(), rois.len() * out * out * plan.taps);
                    assert_eq!(plan.weight.len(), plan.index.len());
                    plan.check_rows(images * total).unwrap();
                    let got = apply_plan(&plan, &features, channels).unwrap();
                    let want = roi_align_naive(
                        &features, channels, &levels, total, &rois, out, sr, aligned,
                    )
                    .unwrap();
                    assert!(want.iter().any(|v| v.abs() > 1e-3));
                    assert!(want.contains(&0.0));
                    assert_close(&got, &want, 1e-5);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 8);
    }

    #[test]
    fn taps_is_four_times_max_samples() {
        let (levels, total) = levels3();
        // stride 4, aligned: roi side 56 px = 14 cells → ceil(14 / 7) = 2 per axis.
        let roi = |w: f32| Roi {
            batch: 0,
            level: 0,
            bbox: [0.0, 0.0, w, 56.0],
        };
        let plan = roi_align_plan(&[roi(56.0), roi(1.0)], &levels, total, 7, 0, true).unwrap();
        assert_eq!(plan.taps, 16);
        let plan = roi_align_plan(&[roi(1.0), roi(112.0)], &levels, total, 7, 0, true).unwrap();
        assert_eq!(plan.taps, 4 * 2 * 4);
        let plan = roi_align_plan(&[roi(56.0)], &levels, total, 7, 3, true).unwrap();
        assert_eq!(plan.taps, 36);
        let plan = roi_align_plan(&[], &levels, total, 7, 0, true).unwrap();
        assert!(plan.index.is_empty() && plan.taps >= 4);
    }

    #[test]
    fn sample_cap_bounds_taps() {
        let (levels, total) = levels3();
        let roi = Roi {
            batch: 0,
            level: 0,
            bbox: [-1e7, -1e7, 1e7, 1e7],
        };
        let plan = roi_align_plan(&[roi], &levels, total, 2, 0, true).unwrap();
        assert_eq!(plan.taps, 4 * MAX_SAMPLES_PER_AXIS * MAX_SAMPLES_PER_AXIS);
        let inf = Roi {
            bbox: [f32::NEG_INFINITY, 0.0, f32::INFINITY, f32::NAN],
            ..roi
        };
        let plan = roi_align_plan(&[inf], &levels, total, 2, 0, true).unwrap();
        assert!(plan.weight.iter().all(|w| w.is_finite()));
    }

    #[test]
    fn hand_computed_linear_map() {
        // 4×4 map, value = x + 10·y, one channel, stride 1.
        let levels = [Level {
            h: 4,
            w: 4,
            stride: 1.0,
            start: 0,
        }];
        let features: Vec<f32> = (0..16)
            .map(|i| (i % 4) as f32 + 10.0 * (i / 4) as f32)
            .collect();
        let rois = [Roi {
            batch: 0,
            level: 0,
            bbox: [0.0, 0.0, 4.0, 4.0],
        }];
        // aligned: start −0.5, bin 2, one sample at the bin centre → x, y ∈ {0.5, 2.5}.
        let plan = roi_align_plan(&rois, &levels, 16, 2, 1, true).unwrap();
        assert_eq!(plan.taps, 4);
        let got = apply_plan(&plan, &features, 1).unwrap();
        assert_close(&got, &[5.5, 7.5, 25.5, 27.5], 1e-6);
        let naive = roi_align_naive(&features, 1, &levels, 16, &rois, 2, 1, true).unwrap();
        assert_close(&naive, &[5.5, 7.5, 25.5, 27.5], 1e-6);
        // not aligned: start 0, samples at {1, 3}; 3 is the last cell (clamped, still exact).
        let plan = roi_align_plan(&rois, &levels, 16, 2, 1, false).unwrap();
        let got = apply_plan(&plan, &features, 1).unwrap();
        assert_close(&got, &[11.0, 13.0, 31.0, 33.0], 1e-6);
        // aligned, 2×2 samples per bin: x ∈ {0, 1} | {2, 3} → mean 0.5 | 2.5, same values.
        let plan = roi_align_plan(&rois, &levels, 16, 2, 2, true).unwrap();
        assert_eq!(plan.taps, 16);
        let got = apply_plan(&plan, &features, 1).unwrap();
        assert_close(&got, &[5.5, 7.5, 25.5, 27.5], 1e-6);
        // sample at −0.5 (in [−1, 0]) clamps to cell 0: roi [0,0,1,1] aligned, 1 bin.
        let corner = [Roi {
            bbox: [0.0, 0.0, 1.0, 1.0],
            ..rois[0]
        }];
        let plan = roi_align_plan(&corner, &levels, 16, 1, 1, true).unwrap();
        assert_close(&apply_plan(&plan, &features, 1).unwrap(), &[0.0], 1e-6);
        // sample exactly at x = width (= 4) is still inside and clamps to the last column;
        // x = 4.5 is outside: not aligned, roi [3,0,5,4] / [4,0,5,4] → x = 4 / 4.5, y = 2.
        let edge = |x1: f32| Roi {
            bbox: [x1, 0.0, 5.0, 4.0],
            ..rois[0]
        };
        let plan = roi_align_plan(&[edge(3.0), edge(4.0)], &levels, 16, 1, 1, false).unwrap();
        assert_close(
            &apply_plan(&plan, &features, 1).unwrap(),
            &[23.0, 0.0],
            1e-6,
        );
    }

    #[test]
    fn constant_map_partition_of_unity() {
        let (levels, total) = levels3();
        let channels = 2;
        let features = vec![3.0f32; 2 * total * channels];
        let mut rois = Vec::new();
        for level in 0..3 {
            for batch in 0..2 {
                rois.push(Roi {
                    batch,
                    level,
                    bbox: [2.0, 3.0, 60.0, 37.0], // inside the 64×40 image
                });
                rois.push(Roi {
                    batch,
                    level,
                    bbox: [500.0, 500.0, 600.0, 520.0], // fully outside
                });
            }
        }
        for aligned in [true, false] {
            for sr in [0, 2] {
                let plan = roi_align_plan(&rois, &levels, total, 7, sr, aligned).unwrap();
                let got = apply_plan(&plan, &features, channels).unwrap();
                let per_roi = 49 * channels;
                for (r, vals) in got.chunks_exact(per_roi).enumerate() {
                    let want = if r % 2 == 0 { 3.0 } else { 0.0 };
                    assert_close(vals, &vec![want; per_roi], 1e-5);
                }
                for (b, ws) in plan.weight.chunks_exact(plan.taps).enumerate() {
                    let sum: f32 = ws.iter().sum();
                    let want = if (b / 49) % 2 == 0 { 1.0 } else { 0.0 };
                    assert!((sum - want).abs() < 1e-5, "bin {b}: weight sum {sum}");
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (levels, total) = levels3();
        let features = vec![0.0f32; 2 * total * 3];
        let roi = Roi {
            batch: 0,
            level: 3,
            bbox: [0.0, 0.0, 8.0, 8.0],
        };
        let err = roi_align_plan(&[roi], &levels, total, 7, 0, true).unwrap_err();
        assert!(matches!(
            err,
            RoiAlignError::LevelOutOfRange { level: 3, .. }
        ));
        assert!(!err.to_string().is_empty());
        assert!(roi_align_naive(&features, 3, &levels, total, &[roi], 7, 0, true).is_err());

        let roi = Roi {
            batch: 2,
            level: 0,
            ..roi
        };
        let plan = roi_align_plan(&[roi], &levels, total, 7, 0, true).unwrap();
        assert!(matches!(
            plan.check_rows(2 * total),
            Err(RoiAlignError::RowOutOfRange { .. })
        ));
        assert!(apply_plan(&plan, &features, 3).is_err());
        assert!(matches!(
            roi_align_naive(&features, 3, &levels, total, &[roi], 7, 0, true),
            Err(RoiAlignError::BatchOutOfRange { batch: 2, .. })
        ));

        let huge = Roi {
            batch: usize::MAX / 2,
            ..roi
        };
        assert_eq!(
            roi_align_plan(&[huge], &levels, total, 7, 0, true),
            Err(RoiAlignError::Overflow)
        );

        let roi = Roi { batch: 0, ..roi };
        assert!(roi_align_plan(&[roi], &levels, total - 1, 7, 0, true).is_err());
        let mut bad = levels.clone();
        bad[1].stride = 0.0;
        assert!(roi_align_plan(&[roi], &bad, total, 7, 0, true).is_err());
        bad[1].stride = 8.0;
        bad[2].h = 0;
        assert!(roi_align_plan(&[roi], &bad, total, 7, 0, true).is_err());

        let mut plan = roi_align_plan(&[roi], &levels, total, 7, 0, true).unwrap();
        assert!(apply_plan(&plan, &features, 0).is_err());
        assert!(apply_plan(&plan, &features[1..], 3).is_err());
        plan.index[0] = -1;
        assert!(apply_plan(&plan, &features, 3).is_err());
        plan.weight.pop();
        assert!(apply_plan(&plan, &features, 3).is_err());
        assert!(roi_align_naive(&features[1..], 3, &levels, total, &[roi], 7, 0, true).is_err());
    }
}
