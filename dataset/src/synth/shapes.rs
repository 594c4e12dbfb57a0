//! The classes' shapes as polygon contours, and their placement.

use super::*;

pub(super) type Pt = [f32; 2];

/// Polygons filled with the even-odd rule; the first contour is the outline, later ones holes.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    pub(super) contours: Vec<Vec<Pt>>,
}

pub(super) fn signed_area(c: &[Pt]) -> f32 {
    let n = c.len();
    let mut s = 0.0;
    for i in 0..n {
        let (a, b) = (c[i], c[(i + 1) % n]);
        s += a[0] * b[1] - b[0] * a[1];
    }
    0.5 * s
}

impl Shape {
    pub(super) fn bbox(&self) -> [f32; 4] {
        bbox_of(&self.contours)
    }

    /// Area in pixels² (outline minus holes).
    pub(super) fn area(&self) -> f32 {
        let mut it = self.contours.iter();
        let outer = it.next().map_or(0.0, |c| signed_area(c).abs());
        outer - it.map(|c| signed_area(c).abs()).sum::<f32>()
    }
}

pub(super) fn bbox_of(contours: &[Vec<Pt>]) -> [f32; 4] {
    let mut b = [
        f32::INFINITY,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
    ];
    for p in contours.iter().flatten() {
        b[0] = b[0].min(p[0]);
        b[1] = b[1].min(p[1]);
        b[2] = b[2].max(p[0]);
        b[3] = b[3].max(p[1]);
    }
    b
}

pub(super) fn ellipse(cx: f32, cy: f32, rx: f32, ry: f32, n: usize) -> Vec<Pt> {
    (0..n)
        .map(|i| {
            let a = std::f32::consts::TAU * i as f32 / n as f32;
            [cx + rx * a.cos(), cy + ry * a.sin()]
        })
        .collect()
}

pub(super) fn arc(cx: f32, cy: f32, r: f32, a0: f32, a1: f32, n: usize) -> Vec<Pt> {
    (0..=n)
        .map(|i| {
            let a = a0 + (a1 - a0) * i as f32 / n as f32;
            [cx + r * a.cos(), cy + r * a.sin()]
        })
        .collect()
}

/// A class's shape in unit coordinates (about [-1, 1]²), with per-instance variation.
pub(super) fn class_shape(class: usize, rng: &mut Rng) -> Vec<Vec<Pt>> {
    use std::f32::consts::{FRAC_PI_2, PI, TAU};
    match class {
        0 => vec![ellipse(0.0, 0.0, 1.0, 1.0, 64)],
        1 => vec![vec![[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]],
        2 => {
            let v = (0..3)
                .map(|i| {
                    let a = -FRAC_PI_2 + TAU * i as f32 / 3.0 + rng.uniform(-0.15, 0.15);
                    let r = rng.uniform(0.9, 1.1);
                    [r * a.cos(), r * a.sin()]
                })
                .collect();
            vec![v]
        }
        3 => {
            let points = if rng.chance(0.6) { 5 } else { 6 };
            let inner = rng.uniform(0.38, 0.55);
            let v = (0..2 * points)
                .map(|i| {
                    let a = -FRAC_PI_2 + PI * i as f32 / points as f32;
                    let r = if i % 2 == 0 { 1.0 } else { inner };
                    [r * a.cos(), r * a.sin()]
                })
                .collect();
            vec![v]
        }
        4 => {
            let inner = rng.uniform(0.45, 0.72);
            vec![
                ellipse(0.0, 0.0, 1.0, 1.0, 64),
                ellipse(0.0, 0.0, inner, inner, 48),
            ]
        }
        5 => {
            let a = rng.uniform(0.22, 0.38);
            vec![vec![
                [-a, -1.0],
                [a, -1.0],
                [a, -a],
                [1.0, -a],
                [1.0, a],
                [a, a],
                [a, 1.0],
                [-a, 1.0],
                [-a, a],
                [-1.0, a],
                [-1.0, -a],
                [-a, -a],
            ]]
        }
        6 => vec![ellipse(0.0, 0.0, 1.0, 1.0, 6)],
        7 => {
            let shaft = rng.uniform(0.14, 0.26);
            let head = rng.uniform(0.5, 0.75);
            let neck = rng.uniform(0.0, 0.35);
            vec![vec![
                [-1.0, -shaft],
                [neck, -shaft],
                [neck, -head],
                [1.0, 0.0],
                [neck, head],
                [neck, shaft],
                [-1.0, shaft],
            ]]
        }
        8 => {
            let v = (0..64)
                .map(|i| {
                    let t = TAU * i as f32 / 64.0;
                    let x = 16.0 * t.sin().powi(3);
                    let y = 13.0 * t.cos()
                        - 5.0 * (2.0 * t).cos()
                        - 2.0 * (3.0 * t).cos()
                        - (4.0 * t).cos();
                    [x / 17.0, -y / 17.0]
                })
                .collect();
            vec![v]
        }
        _ => {
            // Crescent: the unit disc minus a disc of radius r2 centred at (d, 0).
            let r2 = rng.uniform(0.72, 0.95);
            let d = rng.uniform(0.3, 0.6);
            let xi = (1.0 - r2 * r2 + d * d) / (2.0 * d);
            let yi = (1.0 - xi * xi).max(0.0).sqrt();
            let alpha = yi.atan2(xi);
            let beta = yi.atan2(xi - d);
            let mut v = arc(0.0, 0.0, 1.0, alpha, TAU - alpha, 40);
            let mut inner = arc(d, 0.0, r2, TAU - beta, beta, 32);
            // Endpoints coincide with the outer arc's.
            inner.remove(0);
            inner.pop();
            v.extend(inner);
            vec![v]
        }
    }
}

/// Stretches, rotates and scales unit contours so the box has `target_area`, then moves the box
/// to a random place; `truncate` is how much of the box (per axis) may hang outside the image.
#[allow(clippy::too_many_arguments)]
pub(super) fn place_shape(
    unit: &[Vec<Pt>],
    rng: &mut Rng,
    stretch: f32,
    theta: f32,
    target_area: f32,
    w: usize,
    h: usize,
    truncate: f32,
) -> Shape {
    let (sx, sy) = (stretch.sqrt(), 1.0 / stretch.sqrt());
    let (s, c) = theta.sin_cos();
    let mut contours: Vec<Vec<Pt>> = unit
        .iter()
        .map(|ct| {
            ct.iter()
                .map(|p| {
                    let (x, y) = (p[0] * sx, p[1] * sy);
                    [c * x - s * y, s * x + c * y]
                })
                .collect()
        })
        .collect();
    let b = bbox_of(&contours);
    let (bw1, bh1) = ((b[2] - b[0]).max(1e-3), (b[3] - b[1]).max(1e-3));
    let (wf, hf) = (w as f32, h as f32);
    let k = (target_area / (bw1 * bh1))
        .sqrt()
        .min(0.95 * wf / bw1)
        .min(0.95 * hf / bh1);
    let (bw, bh) = (bw1 * k, bh1 * k);
    let pick = |rng: &mut Rng, len: f32, side: f32| {
        let lo = len * (0.5 - truncate);
        let hi = side - lo;
        if hi > lo {
            rng.uniform(lo, hi)
        } else {
            side * 0.5
        }
    };
    let cx = pick(rng, bw, wf);
    let cy = pick(rng, bh, hf);
    let (mx, my) = ((b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5);
    for p in contours.iter_mut().flatten() {
        p[0] = cx + (p[0] - mx) * k;
        p[1] = cy + (p[1] - my) * k;
    }
    Shape { contours }
}
