//! Rendering of one image: the scene in drawing order, the objects, their visible boxes.

use super::*;

pub(super) fn image_rng(seed: u64, split: Split, index: usize) -> Rng {
    let split_seed = Rng::fork(seed, split.salt()).next_u64();
    Rng::fork(split_seed, index as u64)
}

/// Renders image `index` of `split`: a pure function of the config's seed and size.
pub fn render_image(cfg: &SynthConfig, split: Split, index: usize) -> SynthImage {
    let mut rng = image_rng(cfg.seed, split, index);
    let mut cv = Canvas::new(cfg.width as usize, cfg.height as usize);
    let scale = (cfg.width.min(cfg.height) as f32 / 256.0).max(0.25);

    draw_background(&mut cv, &mut rng, scale);
    for _ in 0..rng.range_incl(1, 7) {
        draw_distractor(&mut cv, &mut rng, scale, false);
    }

    // Objects: sizes first, then drawn roughly big-first (with jitter) so that small objects are
    // not routinely buried under big ones.
    let n = if rng.chance(0.06) {
        0
    } else {
        1 + rng.below(MAX_OBJECTS)
    };
    let mut plans: Vec<(f32, usize, f32)> = Vec::with_capacity(n);
    let mut large = 0;
    for _ in 0..n {
        let class = rng.below(CLASS_NAMES.len());
        let area = sample_object_area(&mut rng, cv.w, cv.h, &mut large);
        let order = area * (rng.normal() * 1.0).exp();
        plans.push((order, class, area));
    }
    plans.sort_by(|a, b| b.0.total_cmp(&a.0));

    let mut drawn: Vec<DrawnObject> = Vec::with_capacity(n);
    for &(_, class, area) in &plans {
        if let Some(obj) = draw_object(&mut cv, &mut rng, class, area, &drawn) {
            drawn.push(obj);
        }
        if rng.chance(0.08) {
            draw_distractor(&mut cv, &mut rng, scale, true);
        }
    }
    for _ in 0..rng.range_incl(0, 2) {
        draw_distractor(&mut cv, &mut rng, scale, true);
    }

    postprocess(&mut cv, &mut rng, scale);

    let (objects, hidden) = visible_objects(&cv, &drawn);
    SynthImage {
        image: cv.to_image(),
        objects,
        hidden,
    }
}

/// Annotations from the owner map: the visible box of each drawn object, or nothing when less
/// than [`MIN_VISIBLE_FRACTION`] of it is visible. Returns the objects and the hidden count.
pub(super) fn visible_objects(cv: &Canvas, drawn: &[DrawnObject]) -> (Vec<SynthObject>, usize) {
    let mut boxes = vec![(usize::MAX, usize::MAX, 0usize, 0usize, 0.0f32); drawn.len()];
    for (y, (row, cov)) in cv
        .owner
        .chunks_exact(cv.w)
        .zip(cv.owner_cov.chunks_exact(cv.w))
        .enumerate()
    {
        for (x, (&o, &c)) in row.iter().zip(cov).enumerate() {
            let Some(b) = (o as usize).checked_sub(1).and_then(|k| boxes.get_mut(k)) else {
                continue;
            };
            b.0 = b.0.min(x);
            b.1 = b.1.min(y);
            b.2 = b.2.max(x);
            b.3 = b.3.max(y);
            b.4 += c;
        }
    }
    let mut objects = Vec::with_capacity(drawn.len());
    let mut hidden = 0;
    for (d, &(x0, y0, x1, y1, count)) in drawn.iter().zip(&boxes) {
        // Visible area: the owner's opacity summed over its pixels (≈ the shape's area when
        // nothing covers it).
        let visible = count / d.area.max(1.0);
        if count <= 0.0 || visible < MIN_VISIBLE_FRACTION || x1 - x0 < 1 || y1 - y0 < 1 {
            hidden += 1;
            continue;
        }
        objects.push(SynthObject {
            class: d.class,
            bbox: [
                x0 as f64,
                y0 as f64,
                (x1 + 1 - x0) as f64,
                (y1 + 1 - y0) as f64,
            ],
            visible_fraction: visible.min(1.0),
        });
    }
    (objects, hidden)
}

/// Box area of an object: a COCO bucket chosen at random (30 % small, 28 % medium, 42 % large,
/// at most 5 large per image), then log-uniform inside it. The mix over-asks for large boxes
/// because crowded images skip some of them and occlusion and truncation shrink visible boxes;
/// the written annotations come out near 33 % small / 41 % medium / 25 % large at 256×256.
pub(super) fn sample_object_area(rng: &mut Rng, w: usize, h: usize, large: &mut usize) -> f32 {
    let side = w.min(h) as f32;
    let max_area = (0.8 * side).powi(2);
    let min_area = 64.0f32;
    let u = rng.f32();
    let (mut lo, mut hi) = if u < 0.30 {
        (min_area, SMALL_AREA as f32)
    } else if u < 0.58 || *large >= 5 {
        (SMALL_AREA as f32, MEDIUM_AREA as f32)
    } else {
        *large += 1;
        (1.15 * MEDIUM_AREA as f32, max_area)
    };
    hi = hi.min(max_area);
    lo = lo.min(hi * 0.5);
    (lo.ln() + (hi.ln() - lo.ln()) * rng.f32()).exp()
}

pub(super) struct DrawnObject {
    pub(super) class: usize,
    /// Full (amodal) shape area in pixels².
    pub(super) area: f32,
    /// Box of the full shape, possibly outside the image: `[x0, y0, x1, y1]`.
    pub(super) bbox: [f32; 4],
}

pub(super) fn draw_object(
    cv: &mut Canvas,
    rng: &mut Rng,
    class: usize,
    target_area: f32,
    drawn: &[DrawnObject],
) -> Option<DrawnObject> {
    let id = u16::try_from(drawn.len() + 1).ok()?;
    let unit = class_shape(class, rng);
    let stretch = (rng.uniform(0.5f32.ln(), 2.0f32.ln())).exp();
    let theta = match class {
        // A heart upside down reads as something else; keep it roughly upright.
        8 => rng.uniform(-0.8, 0.8),
        _ => rng.uniform(0.0, std::f32::consts::TAU),
    };
    let truncate = if rng.chance(0.3) {
        rng.uniform(0.0, 0.55)
    } else {
        0.0
    };
    // Try a few positions that do not bury an earlier object's box.
    let mut placed = None;
    for _ in 0..8 {
        let shape = place_shape(
            &unit,
            rng,
            stretch,
            theta,
            target_area,
            cv.w,
            cv.h,
            truncate,
        );
        let b = shape.bbox();
        let buries = drawn.iter().any(|d| {
            let iw = (b[2].min(d.bbox[2]) - b[0].max(d.bbox[0])).max(0.0);
            let ih = (b[3].min(d.bbox[3]) - b[1].max(d.bbox[1])).max(0.0);
            let da = (d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1]);
            iw * ih > 0.55 * da
        });
        if !buries {
            placed = Some(shape);
            break;
        }
    }
    let shape = placed?;
    let b = shape.bbox();
    let bg = cv.samples_in(b);
    let paint = object_paint(rng, &bg, b);
    let alpha = if rng.chance(0.15) {
        rng.uniform(0.75, 0.95)
    } else {
        1.0
    };

    if rng.chance(0.2) {
        // Outline: the shape grown by `t` pixels per side, in a colour that contrasts with both
        // the background and the fill.
        let t = rng.uniform(1.0, 2.5);
        let (cx, cy) = ((b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5);
        let kx = 1.0 + 2.0 * t / (b[2] - b[0]).max(1.0);
        let ky = 1.0 + 2.0 * t / (b[3] - b[1]).max(1.0);
        let grown: Vec<Vec<[f32; 2]>> = shape
            .contours
            .iter()
            .map(|c| {
                c.iter()
                    .map(|p| [cx + (p[0] - cx) * kx, cy + (p[1] - cy) * ky])
                    .collect()
            })
            .collect();
        let mut avoid = bg;
        avoid.extend(std::iter::repeat_n(paint.c0, avoid.len().max(1)));
        let oc = contrasting_colour(rng, &avoid, 50.0);
        let cov = rasterize(&grown, cv.w, cv.h);
        cv.composite(&cov, &Paint::solid(oc), alpha, Some(id));
    }
    let cov = rasterize(&shape.contours, cv.w, cv.h);
    cv.composite(&cov, &paint, alpha, Some(id));
    Some(DrawnObject {
        class,
        area: shape.area(),
        bbox: b,
    })
}
