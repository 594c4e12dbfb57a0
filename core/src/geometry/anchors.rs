//! The anchor generator of the auxiliary heads: mmdet's `AnchorGenerator` (v2.x), once. The
//! RPN uses 3 ratios × its octave scales per location; ATSS one square anchor per location.
//! All boxes are `[x1, y1, x2, y2]` in input-image pixels.

/// Number of anchors per feature-map location (`scales_per_octave * num_ratios`), i.e. the
/// channel multiplier of the RPN head outputs.
pub fn anchors_per_location(scales_per_octave: usize, num_ratios: usize) -> usize {
    scales_per_octave * num_ratios
}

/// mmdet `gen_single_level_base_anchors` with `center_offset = 0` and `scale_major = True`:
/// ratio-major order (`a = r * scales_per_octave + s`), each anchor centred at the origin.
fn base_anchors(
    stride: usize,
    octave_base_scale: f32,
    scales_per_octave: usize,
    ratios: &[f32],
) -> Vec<[f32; 4]> {
    // mmdet builds the octave scales in float64 numpy and only then casts to a float32 tensor.
    let scales: Vec<f32> = (0..scales_per_octave)
        .map(|i| {
            let octave = 2f64.powf(i as f64 / scales_per_octave as f64);
            (octave * f64::from(octave_base_scale)) as f32
        })
        .collect();
    let base = stride as f32;
    let mut out = Vec::with_capacity(ratios.len() * scales.len());
    for &ratio in ratios {
        let h_ratio = ratio.sqrt();
        let w_ratio = 1.0 / h_ratio;
        for &scale in &scales {
            // Same association as `w * w_ratios[:, None] * scales[None, :]`.
            let ws = base * w_ratio * scale;
            let hs = base * h_ratio * scale;
            out.push([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs]);
        }
    }
    out
}

/// All RPN anchors of a feature pyramid, as mmdet's `AnchorGenerator` (`base_size = stride`,
/// `center_offset = 0`, octave scales `octave_base_scale * 2^(i / scales_per_octave)`).
///
/// `level_shapes` are `[h, w]`. The output is level by level, row-major over locations within a
/// level, all base anchors (ratio-major) at each location: index =
/// level start + `(y * w + x) * A + a`, matching the flattened `(A, H, W) -> (H, W, A)` head
/// outputs. Levels beyond the shorter of `level_shapes` / `strides` are ignored.
pub fn generate_anchors(
    level_shapes: &[[usize; 2]],
    strides: &[usize],
    octave_base_scale: f32,
    scales_per_octave: usize,
    ratios: &[f32],
) -> Vec<[f32; 4]> {
    let per_loc = anchors_per_location(scales_per_octave, ratios.len());
    let total = level_shapes
        .iter()
        .zip(strides)
        .try_fold(0usize, |acc, (&[h, w], _)| {
            h.checked_mul(w)?.checked_mul(per_loc)?.checked_add(acc)
        });
    let mut out = Vec::new();
    if let Some(total) = total {
        // Only a hint: an absurd size must not abort here.
        let _ = out.try_reserve(total);
    }
    for (&[h, w], &stride) in level_shapes.iter().zip(strides) {
        let base = base_anchors(stride, octave_base_scale, scales_per_octave, ratios);
        let s = stride as f32;
        for y in 0..h {
            let sy = y as f32 * s;
            for x in 0..w {
                let sx = x as f32 * s;
                out.extend(
                    base.iter()
                        .map(|b| [b[0] + sx, b[1] + sy, b[2] + sx, b[3] + sy]),
                );
            }
        }
    }
    out
}

/// mmdet's `valid_flags` for one image of a padded batch: an anchor (in [`generate_anchors`]
/// order) is valid when its location lies within the image's `[h, w]` pixels, i.e. row
/// `y < ⌈h / stride⌉` and column `x < ⌈w / stride⌉` of its level. With the training configs'
/// `allowed_border = -1` these are the anchors the heads assign and supervise; the rest (over
/// the padding) take no part in the loss.
pub fn valid_anchor_flags(
    level_shapes: &[[usize; 2]],
    strides: &[usize],
    per_location: usize,
    [vh, vw]: [f32; 2],
) -> Vec<bool> {
    let mut out = Vec::new();
    for (&[h, w], &stride) in level_shapes.iter().zip(strides) {
        let s = stride as f32;
        let (rows, cols) = ((vh / s).ceil() as usize, (vw / s).ceil() as usize);
        for y in 0..h {
            for x in 0..w {
                let ok = y < rows && x < cols;
                out.extend(std::iter::repeat_n(ok, per_location));
            }
        }
    }
    out
}

/// ATSS's anchors: one square of side `octave_base_scale · stride` per location (the
/// generator with `ratios = [1]`, one scale per octave), index = level start + `y · w + x`.
pub fn square_anchors(
    level_shapes: &[[usize; 2]],
    strides: &[usize],
    octave_base_scale: f32,
) -> Vec<[f32; 4]> {
    generate_anchors(level_shapes, strides, octave_base_scale, 1, &[1.0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_flags_follow_the_image_region_level_by_level() {
        // Two levels (4×4 at stride 8, 2×2 at 16), 2 anchors per location, an image of 20×9
        // pixels (h × w): level 0 keeps rows < 3 and columns < 2, level 1 rows < 2, cols < 1.
        let f = valid_anchor_flags(&[[4, 4], [2, 2]], &[8, 16], 2, [20.0, 9.0]);
        assert_eq!(f.len(), (16 + 4) * 2);
        let at =
            |level_start: usize, w: usize, y: usize, x: usize| f[level_start + (y * w + x) * 2];
        assert!(at(0, 4, 2, 1) && !at(0, 4, 3, 1) && !at(0, 4, 2, 2));
        assert!(at(32, 2, 1, 0) && !at(32, 2, 1, 1));
        assert_eq!(f.iter().filter(|&&v| v).count(), (3 * 2 + 2) * 2);
        // The whole canvas: every anchor.
        assert!(
            valid_anchor_flags(&[[4, 4]], &[8], 1, [32.0, 32.0])
                .iter()
                .all(|&v| v)
        );
    }

    fn close(a: [f32; 4], b: [f32; 4]) -> bool {
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    #[test]
    fn rpn_anchors_by_hand() {
        // stride 16, octave_base_scale 4, 3 scales per octave, ratios [0.5, 1, 2]:
        //   scales   = 4 * 2^(0/3, 1/3, 2/3) = 4, 5.0396842, 6.3496042
        //   h_ratios = sqrt(r) = 0.70710678, 1, 1.41421356; w_ratios = 1 / h_ratios
        //   ratio 0.5, scale 4:  ws = 16 * 1.41421356 * 4 = 90.509668, hs = 45.254834
        //   ratio 1,   scale 4:  ws = hs = 64
        //   ratio 1,   scale 2^(1/3)*4: ws = hs = 80.634947
        //   ratio 2,   scale 2^(2/3)*4: ws = 16 * 0.70710678 * 6.3496042 = 71.837571,
        //                               hs = 143.675142
        // Ratio-major: a = r * 3 + s. Locations (y, x) row-major, shift (16x, 16y).
        let a = generate_anchors(&[[2, 2]], &[16], 4.0, 3, &[0.5, 1.0, 2.0]);
        assert_eq!(anchors_per_location(3, 3), 9);
        assert_eq!(a.len(), 2 * 2 * 9);
        let h = |w: f32, h: f32| [-w / 2.0, -h / 2.0, w / 2.0, h / 2.0];
        assert!(close(a[0], h(90.509_67, 45.254_83)));
        assert!(close(a[3], [-32.0, -32.0, 32.0, 32.0]));
        assert!(close(a[4], h(80.634_95, 80.634_95)));
        assert!(close(a[8], h(71.837_57, 143.675_14)));
        // Location (y=0, x=1) = index 9..18, shifted by (16, 0).
        assert!(close(a[9 + 3], [-16.0, -32.0, 48.0, 32.0]));
        // Location (y=1, x=0) = index 18..27, shifted by (0, 16).
        assert!(close(a[18 + 3], [-32.0, -16.0, 32.0, 48.0]));
        assert!(close(a[18], [-45.254_83, -6.627_417, 45.254_83, 38.627_42]));
        // Location (y=1, x=1).
        assert!(close(a[27 + 3], [-16.0, -16.0, 48.0, 48.0]));
    }

    #[test]
    fn rpn_anchors_levels_and_count() {
        // Co-DETR's RPN: scales [8], ratios [0.5, 1, 2].
        let shapes = [[3, 5], [2, 3], [1, 1]];
        let strides = [4, 8, 16];
        let a = generate_anchors(&shapes, &strides, 8.0, 1, &[0.5, 1.0, 2.0]);
        assert_eq!(a.len(), (15 + 6 + 1) * 3);
        // Level 1 starts after 45 anchors; its location (y=1, x=2) ratio 1 is centred at
        // (16, 8) with side 64.
        let k = 45 + (3 + 2) * 3 + 1;
        assert!(close(
            a[k],
            [16.0 - 32.0, 8.0 - 32.0, 16.0 + 32.0, 8.0 + 32.0]
        ));
        // Level 2: one location at the origin, side 128 for ratio 1.
        assert!(close(a[45 + 18 + 1], [-64.0, -64.0, 64.0, 64.0]));
        // Extra shapes without a stride are ignored.
        assert_eq!(
            generate_anchors(&shapes, &strides[..1], 8.0, 1, &[1.0]).len(),
            15
        );
    }

    #[test]
    fn square_anchors_two_levels_by_hand() {
        // Level 0: h=2, w=3, stride 4, side 8 → half 4. Level 1: h=1, w=2, stride 8, side 16.
        let a = square_anchors(&[[2, 3], [1, 2]], &[4, 8], 2.0);
        let expected: Vec<[f32; 4]> = vec![
            [-4.0, -4.0, 4.0, 4.0], // (x0, y0)
            [0.0, -4.0, 8.0, 4.0],  // (x1, y0)
            [4.0, -4.0, 12.0, 4.0], // (x2, y0)
            [-4.0, 0.0, 4.0, 8.0],  // (x0, y1)
            [0.0, 0.0, 8.0, 8.0],   // (x1, y1)
            [4.0, 0.0, 12.0, 8.0],  // (x2, y1)
            [-8.0, -8.0, 8.0, 8.0], // level 1 (x0, y0)
            [0.0, -8.0, 16.0, 8.0], // level 1 (x1, y0)
        ];
        assert_eq!(a, expected);
        // Co-DETR: octave scale 8 → side 8·stride.
        assert_eq!(
            square_anchors(&[[1, 1]], &[16], 8.0),
            vec![[-64.0, -64.0, 64.0, 64.0]]
        );
        assert!(square_anchors(&[], &[], 8.0).is_empty());
    }

    /// The square anchors are bit for bit what ATSS's own loop made before it used the shared
    /// generator: `[c − h, c + h]` with `h = 0.5 · scale · stride` at `c = (x, y) · stride`.
    #[test]
    fn square_anchors_equal_the_direct_formula() {
        let shapes = [[13, 17], [7, 9], [4, 5], [2, 3], [1, 2]];
        let strides = [8, 16, 32, 64, 128];
        for scale in [8.0f32, 2.0, 5.3] {
            let mut want = Vec::new();
            for (&[h, w], &stride) in shapes.iter().zip(&strides) {
                let s = stride as f32;
                let half = 0.5 * scale * s;
                for y in 0..h {
                    for x in 0..w {
                        let (cx, cy) = (x as f32 * s, y as f32 * s);
                        want.push([cx - half, cy - half, cx + half, cy + half]);
                    }
                }
            }
            let got = square_anchors(&shapes, &strides, scale);
            let bits =
                |v: &[[f32; 4]]| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
            assert_eq!(bits(&got), bits(&want), "scale {scale}");
        }
    }
}
