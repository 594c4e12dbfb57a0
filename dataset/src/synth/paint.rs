//! Colour, noise and paint (the patterns objects and backgrounds are filled with).

use super::*;

pub(super) type Rgb = [f32; 3];

pub(super) fn hsv(h: f32, s: f32, v: f32) -> Rgb {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as i32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

pub(super) fn random_colour(rng: &mut Rng) -> Rgb {
    let s = if rng.chance(0.15) {
        rng.uniform(0.0, 0.12)
    } else {
        rng.f32()
    };
    hsv(rng.f32(), s, rng.uniform(0.06, 1.0))
}

pub(super) fn dist(a: Rgb, b: Rgb) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

pub(super) fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// How far `c` stands out from the colours `avoid` (e.g. background samples): the RGB distance
/// (0..441) that 80 % of them exceed. Unlike the distance to their mean, this sees that a colour
/// in the middle of a two-colour texture is not always visible, and one equal to either is not.
pub(super) fn contrast(c: Rgb, avoid: &[Rgb]) -> f32 {
    if avoid.is_empty() {
        return f32::INFINITY;
    }
    let mut d: Vec<f32> = avoid.iter().map(|&a| dist(c, a)).collect();
    let k = d.len() / 5;
    *d.select_nth_unstable_by(k, f32::total_cmp).1
}

/// A random colour whose [`contrast`] against `avoid` is at least `min_dist`, or the most
/// contrasting of the tries.
pub(super) fn contrasting_colour(rng: &mut Rng, avoid: &[Rgb], min_dist: f32) -> Rgb {
    let mut best = random_colour(rng);
    let mut best_d = contrast(best, avoid);
    for _ in 0..32 {
        if best_d >= min_dist {
            break;
        }
        let c = random_colour(rng);
        let d = contrast(c, avoid);
        if d > best_d {
            best = c;
            best_d = d;
        }
    }
    best
}

/// Deterministic hash of a lattice point to [0, 1).
pub(super) fn hash01(x: i64, y: i64, salt: u64) -> f32 {
    let mut h = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ salt;
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 32;
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// Smooth value noise on a lattice with spacing `cell` pixels: values in [0, 1].
#[derive(Debug, Clone)]
pub(super) struct NoiseField {
    pub(super) x0: f32,
    pub(super) y0: f32,
    pub(super) inv_cell: f32,
    pub(super) gw: usize,
    pub(super) gh: usize,
    pub(super) v: Vec<f32>,
}

impl NoiseField {
    pub(super) fn new(rng: &mut Rng, region: [f32; 4], cell: f32) -> Self {
        let cell = cell.max(1.0);
        let gw = ((region[2] - region[0]).max(1.0) / cell).ceil() as usize + 2;
        let gh = ((region[3] - region[1]).max(1.0) / cell).ceil() as usize + 2;
        Self {
            x0: region[0],
            y0: region[1],
            inv_cell: 1.0 / cell,
            gw,
            gh,
            v: (0..gw * gh).map(|_| rng.f32()).collect(),
        }
    }

    pub(super) fn at(&self, x: f32, y: f32) -> f32 {
        let gx = ((x - self.x0) * self.inv_cell).clamp(0.0, self.gw as f32 - 1.001);
        let gy = ((y - self.y0) * self.inv_cell).clamp(0.0, self.gh as f32 - 1.001);
        let (ix, iy) = (gx as usize, gy as usize);
        let (fx, fy) = (gx - ix as f32, gy - iy as f32);
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let i = iy * self.gw + ix;
        let (a, b, c, d) = (
            self.v[i],
            self.v[i + 1],
            self.v[i + self.gw],
            self.v[i + self.gw + 1],
        );
        let top = a + (b - a) * sx;
        let bot = c + (d - c) * sx;
        top + (bot - top) * sy
    }
}

/// Fractal sum of value noise, normalised to about [0, 1].
#[derive(Debug, Clone)]
pub(super) struct Fbm {
    pub(super) octaves: Vec<NoiseField>,
    /// Contrast stretch around 0.5 (sums of octaves cluster near the middle).
    pub(super) gain: f32,
}

impl Fbm {
    pub(super) fn new(rng: &mut Rng, region: [f32; 4], cell: f32, octaves: usize) -> Self {
        let octaves: Vec<NoiseField> = (0..octaves.max(1))
            .map(|o| NoiseField::new(rng, region, cell / (1 << o) as f32))
            .collect();
        let gain = 1.0 + 0.6 * (octaves.len() - 1) as f32;
        Self { octaves, gain }
    }

    pub(super) fn at(&self, x: f32, y: f32) -> f32 {
        let mut sum = 0.0;
        let mut wsum = 0.0;
        let mut w = 1.0;
        for o in &self.octaves {
            sum += w * o.at(x, y);
            wsum += w;
            w *= 0.5;
        }
        ((sum / wsum - 0.5) * self.gain + 0.5).clamp(0.0, 1.0)
    }
}

/// Anti-aliased square wave: 1 inside the "on" part of each period, 0 outside.
pub(super) fn square_wave(u: f32, period: f32, duty: f32) -> f32 {
    let f = u.rem_euclid(period);
    let on = duty * period;
    if f < on {
        0.5 + f.min(on - f).min(0.5)
    } else {
        0.5 - (f - on).min(period - f).min(0.5)
    }
}

#[derive(Debug, Clone)]
pub(super) enum Pattern {
    Solid,
    /// t = (p - o)·d, d already divided by the ramp length.
    Linear {
        ox: f32,
        oy: f32,
        dx: f32,
        dy: f32,
    },
    Radial {
        cx: f32,
        cy: f32,
        inv_r: f32,
    },
    Stripes {
        dx: f32,
        dy: f32,
        period: f32,
        duty: f32,
        phase: f32,
    },
    Checker {
        cos: f32,
        sin: f32,
        cell: f32,
        pu: f32,
        pv: f32,
    },
    Noise(Fbm),
}

#[derive(Debug, Clone)]
pub(super) struct Paint {
    pub(super) c0: Rgb,
    pub(super) c1: Rgb,
    pub(super) pattern: Pattern,
}

impl Paint {
    pub(super) fn solid(c: Rgb) -> Self {
        Self {
            c0: c,
            c1: c,
            pattern: Pattern::Solid,
        }
    }

    pub(super) fn at(&self, x: f32, y: f32) -> Rgb {
        let t = match &self.pattern {
            Pattern::Solid => return self.c0,
            Pattern::Linear { ox, oy, dx, dy } => ((x - ox) * dx + (y - oy) * dy).clamp(0.0, 1.0),
            Pattern::Radial { cx, cy, inv_r } => {
                (((x - cx).powi(2) + (y - cy).powi(2)).sqrt() * inv_r).min(1.0)
            }
            Pattern::Stripes {
                dx,
                dy,
                period,
                duty,
                phase,
            } => square_wave(x * dx + y * dy + phase, *period, *duty),
            Pattern::Checker {
                cos,
                sin,
                cell,
                pu,
                pv,
            } => {
                let a = square_wave(x * cos + y * sin + pu, 2.0 * cell, 0.5);
                let b = square_wave(-x * sin + y * cos + pv, 2.0 * cell, 0.5);
                a + b - 2.0 * a * b
            }
            Pattern::Noise(f) => f.at(x, y),
        };
        mix(self.c0, self.c1, t)
    }
}

/// A random pattern over `region` (`[x0, y0, x1, y1]`) with features scaled to its size.
pub(super) fn random_pattern(rng: &mut Rng, region: [f32; 4], allow_solid: bool) -> Pattern {
    let (w, h) = (region[2] - region[0], region[3] - region[1]);
    let size = w.max(h).max(4.0);
    let angle = rng.uniform(0.0, std::f32::consts::TAU);
    let (sin, cos) = angle.sin_cos();
    let kind = if allow_solid {
        rng.below(6)
    } else {
        1 + rng.below(5)
    };
    match kind {
        0 => Pattern::Solid,
        1 => {
            let len = size * rng.uniform(0.5, 1.2);
            Pattern::Linear {
                ox: (region[0] + region[2]) * 0.5 - cos * len * 0.5,
                oy: (region[1] + region[3]) * 0.5 - sin * len * 0.5,
                dx: cos / len,
                dy: sin / len,
            }
        }
        2 => Pattern::Radial {
            cx: rng.uniform(region[0], region[2]),
            cy: rng.uniform(region[1], region[3]),
            inv_r: 1.0 / (size * rng.uniform(0.4, 1.0)),
        },
        3 => Pattern::Stripes {
            dx: cos,
            dy: sin,
            period: (size * rng.uniform(0.08, 0.35)).max(3.0),
            duty: rng.uniform(0.3, 0.7),
            phase: rng.uniform(0.0, 100.0),
        },
        4 => Pattern::Checker {
            cos,
            sin,
            cell: (size * rng.uniform(0.06, 0.25)).max(2.0),
            pu: rng.uniform(0.0, 100.0),
            pv: rng.uniform(0.0, 100.0),
        },
        _ => {
            let cell = (size * rng.uniform(0.1, 0.5)).max(2.0);
            Pattern::Noise(Fbm::new(rng, region, cell, 2))
        }
    }
}

/// Paint for an object whose box is `b` over a background sampled as `bg`.
pub(super) fn object_paint(rng: &mut Rng, bg: &[Rgb], b: [f32; 4]) -> Paint {
    // Contrast varies from subtle to strong but never vanishes.
    let min_contrast = rng.uniform(55.0, 130.0);
    let c0 = contrasting_colour(rng, bg, min_contrast);
    let c1 = if rng.chance(0.4) {
        // Low internal contrast: a nearby shade of c0.
        let j = [
            rng.uniform(-50.0, 50.0),
            rng.uniform(-50.0, 50.0),
            rng.uniform(-50.0, 50.0),
        ];
        let c = [
            (c0[0] + j[0]).clamp(0.0, 255.0),
            (c0[1] + j[1]).clamp(0.0, 255.0),
            (c0[2] + j[2]).clamp(0.0, 255.0),
        ];
        if contrast(c, bg) >= 0.8 * min_contrast {
            c
        } else {
            c0
        }
    } else {
        contrasting_colour(rng, bg, min_contrast)
    };
    Paint {
        c0,
        c1,
        pattern: random_pattern(rng, b, true),
    }
}
