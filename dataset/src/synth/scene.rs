//! Background, distractors and photometric post-processing.

use super::*;

pub(super) fn draw_background(cv: &mut Canvas, rng: &mut Rng, scale: f32) {
    let (w, h) = (cv.w as f32, cv.h as f32);
    let full = [0.0, 0.0, w, h];
    let ca = random_colour(rng);
    let cb = if rng.chance(0.5) {
        random_colour(rng)
    } else {
        mix(ca, random_colour(rng), rng.uniform(0.2, 0.6))
    };
    let cc = random_colour(rng);
    match rng.below(6) {
        0 | 1 => {
            let pattern = if rng.chance(0.6) {
                random_pattern(rng, full, false)
            } else {
                Pattern::Linear {
                    ox: 0.0,
                    oy: 0.0,
                    dx: rng.uniform(-1.0, 1.0) / w,
                    dy: rng.uniform(-1.0, 1.0) / h,
                }
            };
            let p = Paint {
                c0: ca,
                c1: cb,
                pattern,
            };
            cv.fill_with(|x, y| p.at(x, y));
        }
        2 | 3 => {
            let cell = rng.uniform(24.0, 110.0) * scale;
            let f = Fbm::new(rng, full, cell, 3);
            cv.fill_with(|x, y| {
                let t = f.at(x, y);
                if t < 0.5 {
                    mix(ca, cb, t * 2.0)
                } else {
                    mix(cb, cc, t * 2.0 - 1.0)
                }
            });
        }
        4 => {
            // Tiles with jittered colours.
            let tw = rng.uniform(8.0, 56.0) * scale;
            let th = tw * rng.uniform(0.6, 1.6);
            let salt = rng.next_u64();
            let grout = rng.uniform(0.0, 2.0);
            let gc = random_colour(rng);
            cv.fill_with(|x, y| {
                let (tx, ty) = ((x / tw).floor(), (y / th).floor());
                let t = hash01(tx as i64, ty as i64, salt);
                let c = mix(ca, cb, t);
                let (fx, fy) = (x - tx * tw, y - ty * th);
                if fx < grout || fy < grout { gc } else { c }
            });
        }
        _ => {
            let p = Paint {
                c0: ca,
                c1: cb,
                pattern: random_pattern(rng, full, false),
            };
            let cell = rng.uniform(20.0, 80.0) * scale;
            let f = Fbm::new(rng, full, cell, 2);
            cv.fill_with(|x, y| mix(p.at(x, y), cc, 0.5 * f.at(x, y)));
        }
    }
    // Fine grain texture.
    if rng.chance(0.6) {
        let amp = rng.uniform(0.05, 0.35);
        let cell = rng.uniform(1.5, 6.0);
        let f = Fbm::new(rng, full, cell, 2);
        cv.fill_with_map(|x, y, p| {
            let m = 1.0 + amp * (f.at(x, y) - 0.5) * 2.0;
            [p[0] * m, p[1] * m, p[2] * m]
        });
    }
    // Clutter: thin lines and faint blobs.
    for _ in 0..rng.range_incl(0, 10) {
        let p = [rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h];
        let a = rng.uniform(0.0, std::f32::consts::TAU);
        let len = rng.uniform(0.2, 1.2) * w.max(h);
        let q = [p[0] + len * a.cos(), p[1] + len * a.sin()];
        if let Some(quad) = segment_quad(p, q, rng.uniform(0.3, 1.3) * scale.sqrt()) {
            let paint = Paint::solid(random_colour(rng));
            let alpha = rng.uniform(0.3, 1.0);
            cv.composite(&rasterize(&[quad], cv.w, cv.h), &paint, alpha, None);
        }
    }
    for _ in 0..rng.range_incl(0, 4) {
        let area = (rng.uniform(0.02, 0.2) * w * h).max(64.0);
        let blob = blob_shape(rng, 0.15, 0.35);
        let (stretch, theta) = (rng.uniform(0.6, 1.6), rng.uniform(0.0, 6.3));
        let shape = place_shape(&blob, rng, stretch, theta, area, cv.w, cv.h, 0.4);
        let b = shape.bbox();
        let paint = Paint {
            c0: random_colour(rng),
            c1: random_colour(rng),
            pattern: random_pattern(rng, b, true),
        };
        let alpha = rng.uniform(0.15, 0.5);
        cv.composite(&rasterize(&shape.contours, cv.w, cv.h), &paint, alpha, None);
    }
}

impl Canvas {
    pub(super) fn fill_with_map(&mut self, mut f: impl FnMut(f32, f32, Rgb) -> Rgb) {
        for (i, p) in self.px.iter_mut().enumerate() {
            let (x, y) = ((i % self.w) as f32 + 0.5, (i / self.w) as f32 + 0.5);
            *p = f(x, y, *p);
        }
    }
}

/// An irregular closed blob: a circle with strong low-frequency radial harmonics.
pub(super) fn blob_shape(rng: &mut Rng, lo: f32, hi: f32) -> Vec<Vec<Pt>> {
    let harmonics: Vec<(f32, f32, f32)> = (2..6)
        .map(|k| {
            // Strong 3rd harmonic plus some 4th/5th: lumpy, never an ellipse (which a pure
            // 2nd harmonic would give, and which would look like a stretched disc).
            let amp = match k {
                2 => rng.uniform(0.0, hi),
                3 => rng.uniform(lo + 0.08, hi + 0.05),
                _ => rng.uniform(0.04, 0.14),
            };
            (k as f32, amp, rng.uniform(0.0, std::f32::consts::TAU))
        })
        .collect();
    let v = (0..48)
        .map(|i| {
            let a = std::f32::consts::TAU * i as f32 / 48.0;
            let r = 1.0
                + harmonics
                    .iter()
                    .map(|&(k, amp, ph)| amp * (k * a + ph).sin())
                    .sum::<f32>();
            let r = r.max(0.2);
            [r * a.cos(), r * a.sin()]
        })
        .collect();
    vec![v]
}

/// Draws one unannotated distractor. Foreground ones are thin (scribbles, lines, bars) and may
/// cross objects, hiding the pixels they cover.
pub(super) fn draw_distractor(cv: &mut Canvas, rng: &mut Rng, scale: f32, foreground: bool) {
    use std::f32::consts::{PI, TAU};
    let (w, h) = (cv.w as f32, cv.h as f32);
    let kind = if foreground {
        rng.below(3)
    } else {
        rng.below(8)
    };
    let strokes = |cv: &mut Canvas, rng: &mut Rng, pts: &[Pt], half: f32| {
        let b = bbox_of(&[pts.to_vec()]);
        let bg = cv.samples_in(b);
        let min_c = rng.uniform(30.0, 120.0);
        let paint = Paint {
            c0: contrasting_colour(rng, &bg, min_c),
            c1: contrasting_colour(rng, &bg, min_c),
            pattern: random_pattern(rng, b, true),
        };
        for s in pts.windows(2) {
            if let Some(q) = segment_quad(s[0], s[1], half) {
                cv.composite(&rasterize(&[q], cv.w, cv.h), &paint, 1.0, Some(0));
            }
            if half > 0.8 {
                let joint = ellipse(s[1][0], s[1][1], half, half, 10);
                cv.composite(&rasterize(&[joint], cv.w, cv.h), &paint, 1.0, Some(0));
            }
        }
    };
    match kind {
        0 => {
            // Scribble: a random walk.
            let mut p = [rng.uniform(0.0, w), rng.uniform(0.0, h)];
            let mut a = rng.uniform(0.0, TAU);
            let mut pts = vec![p];
            for _ in 0..rng.range_incl(3, 10) {
                a += rng.normal() * 0.9;
                let step = rng.uniform(4.0, 30.0) * scale;
                p = [p[0] + step * a.cos(), p[1] + step * a.sin()];
                pts.push(p);
            }
            let half = rng.uniform(0.5, 2.0) * scale.sqrt();
            strokes(cv, rng, &pts, half);
        }
        1 => {
            // Straight line.
            let p = [rng.uniform(0.0, w), rng.uniform(0.0, h)];
            let a = rng.uniform(0.0, TAU);
            let len = rng.uniform(0.15, 0.8) * w.max(h);
            let q = [p[0] + len * a.cos(), p[1] + len * a.sin()];
            let half = rng.uniform(0.4, 1.5) * scale.sqrt();
            strokes(cv, rng, &[p, q], half);
        }
        2 => {
            // Zigzag.
            let p = [rng.uniform(0.0, w), rng.uniform(0.0, h)];
            let a = rng.uniform(0.0, TAU);
            let (ca, sa) = (a.cos(), a.sin());
            let step = rng.uniform(4.0, 16.0) * scale;
            let amp = rng.uniform(3.0, 12.0) * scale;
            let pts: Vec<Pt> = (0..rng.range_incl(3, 9))
                .map(|i| {
                    let u = i as f32 * step;
                    let v = if i % 2 == 0 { amp } else { -amp };
                    [p[0] + u * ca - v * sa, p[1] + u * sa + v * ca]
                })
                .collect();
            let half = rng.uniform(0.6, 2.5) * scale.sqrt();
            strokes(cv, rng, &pts, half);
        }
        _ => {
            let unit: Vec<Vec<Pt>> = match kind {
                3 | 4 => blob_shape(rng, 0.12, 0.32),
                5 => {
                    // Half disc.
                    let mut v = arc(0.0, 0.0, 1.0, 0.0, PI, 24);
                    v.push([-1.0, 0.0]);
                    vec![v]
                }
                6 => {
                    // L shape or a long bar.
                    if rng.chance(0.5) {
                        let a = rng.uniform(0.25, 0.45);
                        vec![vec![
                            [0.0, 0.0],
                            [1.0, 0.0],
                            [1.0, a],
                            [a, a],
                            [a, 1.0],
                            [0.0, 1.0],
                        ]]
                    } else {
                        // Thin enough (aspect ≥ 3.5 after stretch) not to pass for a rectangle.
                        let t = rng.uniform(0.06, 0.14);
                        vec![vec![[-1.0, -t], [1.0, -t], [1.0, t], [-1.0, t]]]
                    }
                }
                _ => {
                    // A spiral band. (Not an open arc of an annulus: small ones are
                    // indistinguishable from crescents and would be unlabelled look-alikes.)
                    let turns = rng.uniform(1.3, 2.3);
                    let end = turns * TAU;
                    let b = 0.85 / end;
                    let half = 0.3 * TAU * b;
                    let n = (turns * 24.0) as usize;
                    let r = |t: f32| 0.15 + b * t;
                    let mut v: Vec<Pt> = (0..=n)
                        .map(|i| {
                            let t = end * i as f32 / n as f32;
                            [(r(t) + half) * t.cos(), (r(t) + half) * t.sin()]
                        })
                        .collect();
                    v.extend((0..=n).rev().map(|i| {
                        let t = end * i as f32 / n as f32;
                        let ri = (r(t) - half).max(0.02);
                        [ri * t.cos(), ri * t.sin()]
                    }));
                    vec![v]
                }
            };
            let area = (rng.uniform(64f32.ln(), (0.3 * w * h).ln())).exp();
            let stretch = rng.uniform(0.5f32.ln(), 2.0f32.ln()).exp();
            let theta = rng.uniform(0.0, TAU);
            let shape = place_shape(&unit, rng, stretch, theta, area, cv.w, cv.h, 0.3);
            let b = shape.bbox();
            let paint = object_paint(rng, &cv.samples_in(b), b);
            cv.composite(
                &rasterize(&shape.contours, cv.w, cv.h),
                &paint,
                1.0,
                Some(0),
            );
        }
    }
}

/// Blur, uneven illumination, contrast and pixel noise.
pub(super) fn postprocess(cv: &mut Canvas, rng: &mut Rng, scale: f32) {
    if rng.chance(0.25) {
        box_blur3(cv);
    }
    if rng.chance(0.5) {
        let (w, h) = (cv.w as f32, cv.h as f32);
        let a = rng.uniform(0.0, std::f32::consts::TAU);
        let (dx, dy) = (a.cos() / w.max(h), a.sin() / w.max(h));
        let lo = rng.uniform(0.6, 0.95);
        let hi = rng.uniform(1.0, 1.2);
        cv.fill_with_map(|x, y, p| {
            let t = ((x - w * 0.5) * dx + (y - h * 0.5) * dy + 0.5).clamp(0.0, 1.0);
            let m = lo + (hi - lo) * t;
            [p[0] * m, p[1] * m, p[2] * m]
        });
    }
    if rng.chance(0.3) {
        let c = rng.uniform(0.75, 1.15);
        let off = rng.uniform(-20.0, 20.0);
        cv.fill_with_map(|_, _, p| {
            [
                (p[0] - 128.0) * c + 128.0 + off,
                (p[1] - 128.0) * c + 128.0 + off,
                (p[2] - 128.0) * c + 128.0 + off,
            ]
        });
    }
    // Pixel noise: an approximately Gaussian sum of four uniforms per value.
    let sigma = rng.uniform(2.0, 12.0) * scale.sqrt().min(1.5);
    let colour_noise = rng.chance(0.5);
    let k = sigma * 3.0f32.sqrt() / 32768.0;
    let gauss = |r: u64| {
        let s = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
        (s as f32 - 131070.0) * 0.5 * k
    };
    for p in &mut cv.px {
        if colour_noise {
            for v in p.iter_mut() {
                *v += gauss(rng.next_u64());
            }
        } else {
            let n = gauss(rng.next_u64());
            for v in p.iter_mut() {
                *v += n;
            }
        }
    }
}

pub(super) fn box_blur3(cv: &mut Canvas) {
    let (w, h) = (cv.w, cv.h);
    let src = cv.px.clone();
    for y in 0..h {
        for x in 0..w {
            let mut s = [0.0f32; 3];
            let mut n = 0.0;
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    let p = src[yy * w + xx];
                    s[0] += p[0];
                    s[1] += p[1];
                    s[2] += p[2];
                    n += 1.0;
                }
            }
            cv.px[y * w + x] = [s[0] / n, s[1] / n, s[2] / n];
        }
    }
}
