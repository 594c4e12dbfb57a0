//! Rasteriser: even-odd polygon fill with anti-aliasing.

use super::*;

/// Per-pixel coverage (0..=1) of a polygon over a window of the canvas.
#[derive(Debug, Clone)]
pub(super) struct Coverage {
    pub(super) x0: usize,
    pub(super) y0: usize,
    pub(super) w: usize,
    pub(super) h: usize,
    pub(super) cov: Vec<f32>,
}

impl Coverage {
    pub(super) fn empty() -> Self {
        Self {
            x0: 0,
            y0: 0,
            w: 0,
            h: 0,
            cov: Vec::new(),
        }
    }

    #[cfg(test)]
    pub(super) fn sum(&self) -> f32 {
        self.cov.iter().sum()
    }
}

/// Rasterises closed polygons (even-odd rule) clipped to a `width`×`height` canvas. Each pixel
/// row is sampled on [`SUBSAMPLES`] horizontal lines; along each line the covered length of
/// every pixel is exact, so edges are anti-aliased in both directions.
pub(super) fn rasterize(contours: &[Vec<Pt>], width: usize, height: usize) -> Coverage {
    let b = bbox_of(contours);
    if !b.iter().all(|v| v.is_finite()) {
        return Coverage::empty();
    }
    let clamp = |v: f32, hi: usize| v.clamp(0.0, hi as f32) as usize;
    let (x0, x1) = (clamp(b[0].floor(), width), clamp(b[2].ceil(), width));
    let (y0, y1) = (clamp(b[1].floor(), height), clamp(b[3].ceil(), height));
    if x1 <= x0 || y1 <= y0 {
        return Coverage::empty();
    }
    let (w, h) = (x1 - x0, y1 - y0);
    let mut cov = vec![0.0f32; w * h];
    let mut edges: Vec<[f32; 4]> = Vec::new();
    for c in contours {
        for i in 0..c.len() {
            let (a, e) = (c[i], c[(i + 1) % c.len()]);
            if a[1] != e[1] {
                edges.push([a[0], a[1], e[0], e[1]]);
            }
        }
    }
    let wsub = 1.0 / SUBSAMPLES as f32;
    let mut xs: Vec<f32> = Vec::with_capacity(16);
    for (row, line) in cov.chunks_exact_mut(w).enumerate() {
        for k in 0..SUBSAMPLES {
            let sy = (y0 + row) as f32 + (k as f32 + 0.5) * wsub;
            xs.clear();
            for &[ax, ay, bx, by] in &edges {
                if (ay <= sy) != (by <= sy) {
                    xs.push(ax + (sy - ay) * (bx - ax) / (by - ay) - x0 as f32);
                }
            }
            xs.sort_by(f32::total_cmp);
            for pair in xs.chunks_exact(2) {
                add_span(line, pair[0], pair[1], wsub);
            }
        }
    }
    for v in &mut cov {
        *v = v.min(1.0);
    }
    Coverage { x0, y0, w, h, cov }
}

/// Adds `weight` × the covered fraction of each pixel of `line` for the span [a, b).
pub(super) fn add_span(line: &mut [f32], a: f32, b: f32, weight: f32) {
    let n = line.len() as f32;
    let (a, b) = (a.clamp(0.0, n), b.clamp(0.0, n));
    if b <= a {
        return;
    }
    let (ia, ib) = (a as usize, b as usize);
    if ia == ib {
        line[ia] += (b - a) * weight;
        return;
    }
    line[ia] += (ia as f32 + 1.0 - a) * weight;
    for v in &mut line[ia + 1..ib] {
        *v += weight;
    }
    if ib < line.len() {
        line[ib] += (b - ib as f32) * weight;
    }
}

/// A thick line segment as a quad.
pub(super) fn segment_quad(p: Pt, q: Pt, half: f32) -> Option<Vec<Pt>> {
    let (dx, dy) = (q[0] - p[0], q[1] - p[1]);
    let len = (dx * dx + dy * dy).sqrt();
    if len < 1e-3 {
        return None;
    }
    let (nx, ny) = (-dy / len * half, dx / len * half);
    Some(vec![
        [p[0] + nx, p[1] + ny],
        [q[0] + nx, q[1] + ny],
        [q[0] - nx, q[1] - ny],
        [p[0] - nx, p[1] - ny],
    ])
}
