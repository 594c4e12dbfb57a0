//! The canvas: RGB pixels plus which object owns each pixel (for visible boxes).

use super::*;

pub(super) struct Canvas {
    pub(super) w: usize,
    pub(super) h: usize,
    /// RGB in 0..=255 (float until the end).
    pub(super) px: Vec<Rgb>,
    /// 0: no object on top; k: object k (1-based) on top.
    pub(super) owner: Vec<u16>,
    /// Coverage of the owner's shape at each owned pixel.
    pub(super) owner_cov: Vec<f32>,
}

/// A drawn pixel with at least this opacity belongs to its object's box when nothing else owns
/// it (so thin tips and anti-aliased edges are inside the box).
pub(super) const OWN_FRINGE: f32 = 0.2;
/// Drawing with at least this opacity takes a pixel over from whatever owned it.
pub(super) const OWN_TAKEOVER: f32 = 0.5;

impl Canvas {
    pub(super) fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            px: vec![[0.0; 3]; w * h],
            owner: vec![0; w * h],
            owner_cov: vec![0.0; w * h],
        }
    }

    pub(super) fn fill_with(&mut self, mut f: impl FnMut(f32, f32) -> Rgb) {
        for (i, p) in self.px.iter_mut().enumerate() {
            let (x, y) = ((i % self.w) as f32 + 0.5, (i / self.w) as f32 + 0.5);
            *p = f(x, y);
        }
    }

    /// Colours inside box `b` (clipped), sampled on a grid of about 9×9 points.
    pub(super) fn samples_in(&self, b: [f32; 4]) -> Vec<Rgb> {
        let x0 = (b[0].max(0.0) as usize).min(self.w.saturating_sub(1));
        let y0 = (b[1].max(0.0) as usize).min(self.h.saturating_sub(1));
        let x1 = (b[2].max(0.0) as usize).clamp(x0 + 1, self.w);
        let y1 = (b[3].max(0.0) as usize).clamp(y0 + 1, self.h);
        let sx = ((x1 - x0) / 8).max(1);
        let sy = ((y1 - y0) / 8).max(1);
        let mut out = Vec::with_capacity(81);
        for y in (y0..y1).step_by(sy) {
            for x in (x0..x1).step_by(sx) {
                out.push(self.px[y * self.w + x]);
            }
        }
        out
    }

    /// Blends `paint` over the canvas with opacity `a = coverage × alpha`, and updates the owner
    /// map when `owner` is given (`Some(0)` for distractors, which hide objects): a pixel is
    /// taken over where `a` ≥ [`OWN_TAKEOVER`], and an unowned pixel is claimed by an object
    /// where `a` ≥ [`OWN_FRINGE`].
    pub(super) fn composite(
        &mut self,
        cov: &Coverage,
        paint: &Paint,
        alpha: f32,
        owner: Option<u16>,
    ) {
        for row in 0..cov.h {
            let y = cov.y0 + row;
            for col in 0..cov.w {
                let k = cov.cov[row * cov.w + col];
                let a = k * alpha;
                if a <= 0.0 {
                    continue;
                }
                let x = cov.x0 + col;
                let i = y * self.w + x;
                let c = paint.at(x as f32 + 0.5, y as f32 + 0.5);
                self.px[i] = mix(self.px[i], c, a);
                if let Some(o) = owner
                    && (a >= OWN_TAKEOVER || (o != 0 && a >= OWN_FRINGE && self.owner[i] == 0))
                {
                    self.owner[i] = o;
                    self.owner_cov[i] = k;
                }
            }
        }
    }

    pub(super) fn to_image(&self) -> image::RgbImage {
        let mut buf = Vec::with_capacity(self.w * self.h * 3);
        for p in &self.px {
            for v in p {
                buf.push((v.clamp(0.0, 255.0) + 0.5) as u8);
            }
        }
        image::RgbImage::from_raw(self.w as u32, self.h as u32, buf)
            .unwrap_or_else(|| image::RgbImage::new(self.w as u32, self.h as u32))
    }
}

// ---------------------------------------------------------------------------------------------
