//! Padding masks (DINO's `img_masks`). A keep-ratio batch holds each image top-left in a
//! canvas padded right and below; the official model masks the padding out of the
//! transformer. Everything it derives from the mask is a function of one number pair per
//! image and level, the count of valid rows and columns of that level's map:
//! - the sine position encoding is normalised over the valid region, not the map;
//! - every level's valid ratio (`valid / size`) scales the encoder's token centres and the
//!   decoder's reference boxes, and the query position is taken from level 0's scaled box;
//! - padded tokens give zero values to every deformable attention;
//! - padded tokens propose no box (`+inf`, memory zeroed), and valid tokens' proposals are
//!   centres over the valid region.
//!
//! The level masks are PyTorch's nearest interpolation of the pixel mask (`F.interpolate`
//! with a target size), reproduced exactly by [`level_count`]. Inputs without padding use
//! the unpadded formulas, which these reduce to when every count equals its map size.

use burn::tensor::{Device, Tensor, TensorData};

use super::position_encoding::SinePositionConfig;
use crate::error::{Error, Result};

/// How many of a level's `out` rows (or columns) are valid when `valid` of the input's
/// `input` rows are: PyTorch's nearest rule `src = min(floor(dst · (input/out)), input − 1)`
/// with the scale in f32, counting destinations whose source is valid.
pub fn level_count(valid: usize, input: usize, out: usize) -> usize {
    if out == input {
        return valid;
    }
    if out == 2 * input {
        return (0..out).filter(|r| r >> 1 < valid).count();
    }
    let scale = input as f32 / out as f32;
    (0..out)
        .filter(|&r| (((r as f32) * scale).floor() as usize).min(input - 1) < valid)
        .count()
}

/// `[B, 1, H, W]`: 1.0 inside each image's `valid` region of the `input` canvas. The official
/// preprocessor pads after normalising, with zeros: multiplying the normalised input by this
/// gives the same.
pub fn pixel_mask(valid: &[[usize; 2]], input: [usize; 2], device: &Device) -> Tensor<4> {
    let [h, w] = input;
    let mut v = vec![0f32; valid.len() * h * w];
    for (b, &[vh, vw]) in valid.iter().enumerate() {
        for y in 0..vh.min(h) {
            let row = (b * h + y) * w;
            v[row..row + vw.min(w)].fill(1.0);
        }
    }
    Tensor::from_data(TensorData::new(v, [valid.len(), 1, h, w]), device)
}

/// Checks `1 ≤ valid ≤ input` on both axes for every image.
pub fn check_valid(valid: &[[usize; 2]], input: [usize; 2]) -> Result<()> {
    for (i, &[h, w]) in valid.iter().enumerate() {
        if h == 0 || w == 0 || h > input[0] || w > input[1] {
            return Err(Error::InvalidArgument {
                what: "valid sizes",
                message: format!(
                    "image {i}: valid {h}x{w} must be at least 1x1 and within the {}x{} input",
                    input[0], input[1]
                ),
            });
        }
    }
    Ok(())
}

/// The valid region of every image of a padded batch and its per-level counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Padding {
    /// `[h, w]` of the padded input.
    pub input: [usize; 2],
    /// Per image: valid `[h, w]` in input pixels, top-left.
    pub valid: Vec<[usize; 2]>,
    /// `[h_l, w_l]` of every level.
    pub shapes: Vec<[usize; 2]>,
    /// Per image, per level: valid `[rows, cols]`.
    pub counts: Vec<Vec<[usize; 2]>>,
}

impl Padding {
    /// The padding of `valid` sizes (checked by [`check_valid`]) in an `input` canvas whose
    /// levels have `shapes`.
    pub fn new(valid: &[[usize; 2]], input: [usize; 2], shapes: &[[usize; 2]]) -> Result<Self> {
        check_valid(valid, input)?;
        let counts = valid
            .iter()
            .map(|&[h, w]| {
                shapes
                    .iter()
                    .map(|&[hl, wl]| [level_count(h, input[0], hl), level_count(w, input[1], wl)])
                    .collect()
            })
            .collect();
        Ok(Self {
            input,
            valid: valid.to_vec(),
            shapes: shapes.to_vec(),
            counts,
        })
    }

    /// True when no image is padded (the unpadded formulas apply).
    pub fn is_trivial(&self) -> bool {
        self.valid.iter().all(|&v| v == self.input)
    }

    fn batch(&self) -> usize {
        self.valid.len()
    }

    fn tokens_total(&self) -> usize {
        self.shapes.iter().map(|[h, w]| h * w).sum()
    }

    /// `[B, S, 1]`: 1.0 for a valid token, 0.0 for a padded one.
    pub fn tokens(&self, device: &Device) -> Tensor<3> {
        let mut v = Vec::with_capacity(self.batch() * self.tokens_total());
        for counts in &self.counts {
            for (&[h, w], &[vh, vw]) in self.shapes.iter().zip(counts) {
                for y in 0..h {
                    for x in 0..w {
                        v.push(if y < vh && x < vw { 1.0f32 } else { 0.0 });
                    }
                }
            }
        }
        Tensor::from_data(
            TensorData::new(v, [self.batch(), self.tokens_total(), 1]),
            device,
        )
    }

    /// Per image and level `(valid_w / w_l, valid_h / h_l)` in f32, as the official
    /// `get_valid_ratio`.
    fn ratios_host(&self) -> Vec<Vec<[f32; 2]>> {
        self.counts
            .iter()
            .map(|counts| {
                self.shapes
                    .iter()
                    .zip(counts)
                    .map(|(&[h, w], &[vh, vw])| [vw as f32 / w as f32, vh as f32 / h as f32])
                    .collect()
            })
            .collect()
    }

    /// `[B, L, 2]` valid ratios `(w, h)`.
    pub fn ratios(&self, device: &Device) -> Tensor<3> {
        let l = self.shapes.len();
        let v: Vec<f32> = self.ratios_host().into_iter().flatten().flatten().collect();
        Tensor::from_data(TensorData::new(v, [self.batch(), l, 2]), device)
    }

    /// `[B, S, L, 2]` the encoder's reference points: each token's centre normalised over its
    /// own level's valid region, then scaled by every level's valid ratio.
    pub fn centres(&self, device: &Device) -> Tensor<4> {
        let l = self.shapes.len();
        let s = self.tokens_total();
        let mut v = Vec::with_capacity(self.batch() * s * l * 2);
        for ratios in self.ratios_host() {
            for (&[h, w], r) in self.shapes.iter().zip(&ratios) {
                for y in 0..h {
                    for x in 0..w {
                        let cx = (x as f32 + 0.5) / (r[0] * w as f32);
                        let cy = (y as f32 + 0.5) / (r[1] * h as f32);
                        for rl in &ratios {
                            v.push(cx * rl[0]);
                            v.push(cy * rl[1]);
                        }
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(v, [self.batch(), s, l, 2]), device)
    }

    /// `[B, S, 4]` proposals in inverse-sigmoid space and `[B, S, 1]` their validity: a valid
    /// token proposes its centre over its level's valid region with side `0.05·2^level`; a
    /// padded token, or one whose proposal leaves (0.01, 0.99), proposes `+inf` and is 0.0.
    pub fn proposals(&self, device: &Device) -> (Tensor<3>, Tensor<3>) {
        let s = self.tokens_total();
        let mut props = Vec::with_capacity(self.batch() * s * 4);
        let mut valid = Vec::with_capacity(self.batch() * s);
        for counts in &self.counts {
            for (lvl, (&[h, w], &[vh, vw])) in self.shapes.iter().zip(counts).enumerate() {
                for y in 0..h {
                    for x in 0..w {
                        let (p, ok) = proposal(lvl, x, y, [vh, vw]);
                        let ok = ok && y < vh && x < vw;
                        valid.push(if ok { 1.0f32 } else { 0.0 });
                        props.extend(p.map(|v| if ok { v } else { f32::INFINITY }));
                    }
                }
            }
        }
        (
            Tensor::from_data(TensorData::new(props, [self.batch(), s, 4]), device),
            Tensor::from_data(TensorData::new(valid, [self.batch(), s, 1]), device),
        )
    }

    /// `[B, S, 2·num_feats]` sine position encoding over each image's valid region (the
    /// level embedding is added by the caller).
    pub fn positions(&self, pe: &SinePositionConfig, device: &Device) -> Tensor<3> {
        let s = self.tokens_total();
        let c = 2 * pe.num_feats;
        let per: Vec<Tensor<2>> = self
            .counts
            .iter()
            .flat_map(|counts| {
                self.shapes.iter().zip(counts).map(|(&[h, w], &valid)| {
                    pe.embedding_valid(h, w, valid, device)
                        .reshape([c, h * w])
                        .swap_dims(0, 1)
                })
            })
            .collect();
        Tensor::cat(per, 0).reshape([self.batch(), s, c])
    }
}

/// The proposal of token `(x, y)` of level `lvl` whose valid region is `[vh, vw]` tokens, in
/// inverse-sigmoid space, and whether all four values of its box lie in (0.01, 0.99).
pub fn proposal(lvl: usize, x: usize, y: usize, [vh, vw]: [usize; 2]) -> ([f32; 4], bool) {
    let wh = 0.05f32 * (1u32 << lvl) as f32;
    let p = [
        (x as f32 + 0.5) / vw as f32,
        (y as f32 + 0.5) / vh as f32,
        wh,
        wh,
    ];
    let ok = p.iter().all(|&v| v > 0.01 && v < 0.99);
    (p.map(|v| (v / (1.0 - v)).ln()), ok)
}

/// ONNX emitter of [`pixel_mask`]: `[N, 1, H, W]` float, 1.0 inside each image's valid
/// region, from `valid` (int64 `[N, 2]`) and the input's `H`, `W` (int64 scalars).
pub fn emit_pixel_mask(
    g: &mut crate::onnx::GraphBuilder,
    valid: &str,
    [ih, iw]: [&str; 2],
) -> String {
    use crate::onnx::builder::Attr;
    g.begin_fp32();
    let (i0, i1, i2, ax1) = (g.ints(&[0]), g.ints(&[1]), g.ints(&[2]), g.ints(&[1]));
    let vh = g.node("Slice", &[valid, &i0, &i1, &ax1], vec![]); // [N, 1]
    let vw = g.node("Slice", &[valid, &i1, &i2, &ax1], vec![]);
    let (zero, one) = (g.init_i64("r0", &[], &[0]), g.init_i64("r1", &[], &[1]));
    let ys = g.node("Range", &[&zero, ih, &one], vec![]);
    let xs = g.node("Range", &[&zero, iw, &one], vec![]);
    let ys = g.node("Unsqueeze", &[&ys, &i0], vec![]); // [1, H]
    let xs = g.node("Unsqueeze", &[&xs, &i0], vec![]);
    let ry = g.node("Less", &[&ys, &vh], vec![]); // [N, H]
    let rx = g.node("Less", &[&xs, &vw], vec![]);
    let ry = g.node("Cast", &[&ry], vec![("to", Attr::Int(1))]);
    let rx = g.node("Cast", &[&rx], vec![("to", Attr::Int(1))]);
    let ry = g.node("Unsqueeze", &[&ry, &i2], vec![]); // [N, H, 1]
    let rx = g.node("Unsqueeze", &[&rx, &ax1], vec![]); // [N, 1, W]
    let m = g.node("Mul", &[&ry, &rx], vec![]);
    let m = g.node("Unsqueeze", &[&m, &ax1], vec![]); // [N, 1, H, W]
    g.end_fp32();
    m
}

/// The graph values of a padded batch ([`emit_padding`]), the ONNX counterparts of
/// [`Padding`]'s tensors; all fp32 (an fp16 export keeps them so).
pub struct EmitPadding {
    /// `[N, S, 1]` 1.0 for valid tokens.
    pub tokens: String,
    /// `[N, 1, L, 4]` valid ratios `(w, h, w, h)` per level.
    pub ratios4: String,
    /// `[N, S, L, 2]` encoder reference points.
    pub centres: String,
    /// `[N, S, 4]` proposals (inverse sigmoid, `+inf` where invalid) and `[N, S, 1]` validity.
    pub proposals: String,
    pub proposal_valid: String,
    /// `[N, S, 2·num_feats]` position encoding (without the level embedding).
    pub positions: String,
}

/// ONNX emitter of [`Padding`] from the graph input `valid` (int64 `[N, 2]`, `[h, w]` pixels)
/// for an input of `input` (float `[1]` each: `H`, `W`) and the run-time `levels`: the same f32
/// operations as the host tables, so a fixed-size and a dynamic-size export agree with Burn.
pub fn emit_padding(
    g: &mut crate::onnx::GraphBuilder,
    valid: &str,
    [ih, iw]: [&str; 2],
    levels: &crate::onnx::Levels,
    pe: &SinePositionConfig,
) -> EmitPadding {
    use crate::onnx::builder::Attr;
    g.begin_fp32();
    let f = g.node("Cast", &[valid], vec![("to", Attr::Int(1))]); // [N, 2]
    let (i0, i1, ax1) = (g.ints(&[0]), g.ints(&[1]), g.ints(&[1]));
    let (e1, e2) = (g.ints(&[1]), g.ints(&[2]));
    let vh = g.node("Slice", &[&f, &i0, &e1, &ax1], vec![]); // [N, 1]
    let vw = g.node("Slice", &[&f, &i1, &e2, &ax1], vec![]);
    let (one, zero) = (g.scalar(1.0), g.scalar(0.0));
    let (zero_i, one_i) = (g.init_i64("r0", &[], &[0]), g.init_i64("r1", &[], &[1]));
    // float [n] 0..n
    let range = |g: &mut crate::onnx::GraphBuilder, n: &str| {
        let r = g.node("Range", &[&zero_i, n, &one_i], vec![]);
        g.node("Cast", &[&r], vec![("to", Attr::Int(1))])
    };
    // [N, n] 1.0 where the level's row (column) comes from a valid input row: PyTorch's
    // nearest rule `min(floor(i · (in / n)), in − 1) < valid`.
    let line_valid =
        |g: &mut crate::onnx::GraphBuilder, n: &str, nf: &str, input: &str, v: &str| {
            let idx = range(g, n);
            let scale = g.node("Div", &[input, nf], vec![]);
            let src = g.node("Mul", &[&idx, &scale], vec![]);
            let src = g.node("Floor", &[&src], vec![]);
            let last = g.node("Sub", &[input, &one], vec![]);
            let src = g.node("Min", &[&src, &last], vec![]);
            let src = g.node("Unsqueeze", &[&src, &i0], vec![]); // [1, n]
            let ok = g.node("Less", &[&src, v], vec![]); // [N, n]
            g.node("Cast", &[&ok], vec![("to", Attr::Int(1))])
        };
    let nf = pe.num_feats;
    let tables = pe.emit_tables(g, &[nf]);
    let (offset, eps, tau) = (
        g.scalar(pe.offset as f32),
        g.scalar(1e-6),
        g.scalar(pe.scale as f32),
    );
    let (half, a2, a3) = (g.scalar(0.5), g.ints(&[2]), g.ints(&[3]));
    let flat = |g: &mut crate::onnx::GraphBuilder, x: &str, k: &[i64]| {
        let mut dims = vec![0, -1];
        dims.extend_from_slice(k);
        let s = g.ints(&dims);
        g.node("Reshape", &[x, &s], vec![])
    };
    let mut tokens = Vec::new();
    let mut ratios = Vec::new();
    let mut per_level = Vec::new(); // (cx [N,1,w], cy [N,h,1]) over the level's valid region
    let mut proposals = Vec::new();
    let mut pvalid = Vec::new();
    let mut positions = Vec::new();
    for (lvl, l) in levels.levels.iter().enumerate() {
        let rows = line_valid(g, &l.h_scalar, &l.hf, ih, &vh); // [N, h]
        let cols = line_valid(g, &l.w_scalar, &l.wf, iw, &vw); // [N, w]
        let ch = g.node(
            "ReduceSum",
            &[&rows, &ax1],
            vec![("keepdims", Attr::Int(1))],
        ); // [N,1]
        let cw = g.node(
            "ReduceSum",
            &[&cols, &ax1],
            vec![("keepdims", Attr::Int(1))],
        );
        let rows3 = g.node("Unsqueeze", &[&rows, &a2], vec![]); // [N, h, 1]
        let cols3 = g.node("Unsqueeze", &[&cols, &ax1], vec![]); // [N, 1, w]
        let tok = g.node("Mul", &[&rows3, &cols3], vec![]); // [N, h, w]
        tokens.push(flat(g, &tok, &[1]));
        let rw = g.node("Div", &[&cw, &l.wf], vec![]); // [N, 1]
        let rh = g.node("Div", &[&ch, &l.hf], vec![]);
        ratios.push(g.node("Concat", &[&rw, &rh], vec![("axis", Attr::Int(1))])); // [N, 2]
        let xs = range(g, &l.w_scalar);
        let xs = g.node("Add", &[&xs, &half], vec![]);
        let xs = g.node("Unsqueeze", &[&xs, &i0], vec![]); // [1, w]
        let ys = range(g, &l.h_scalar);
        let ys = g.node("Add", &[&ys, &half], vec![]);
        let ys = g.node("Unsqueeze", &[&ys, &i0], vec![]); // [1, h]
        // encoder centres over the valid region: (x + 0.5) / (ratio · w)
        let dw = g.node("Mul", &[&rw, &l.wf], vec![]);
        let dh = g.node("Mul", &[&rh, &l.hf], vec![]);
        let cx = g.node("Div", &[&xs, &dw], vec![]);
        let cy = g.node("Div", &[&ys, &dh], vec![]);
        per_level.push((
            g.node("Unsqueeze", &[&cx, &ax1], vec![]),
            g.node("Unsqueeze", &[&cy, &a2], vec![]),
        ));
        // proposals: (x + 0.5) / count, side 0.05 · 2^level
        let px = g.node("Div", &[&xs, &cw], vec![]);
        let py = g.node("Div", &[&ys, &ch], vec![]);
        let px = g.node("Unsqueeze", &[&px, &ax1], vec![]); // [N, 1, w]
        let py = g.node("Unsqueeze", &[&py, &a2], vec![]); // [N, h, 1]
        let zeros = g.node("Mul", &[&tok, &zero], vec![]); // [N, h, w]
        let bx = g.node("Add", &[&zeros, &px], vec![]);
        let by = g.node("Add", &[&zeros, &py], vec![]);
        let side = g.scalar(0.05f32 * (1u32 << lvl) as f32);
        let bs = g.node("Add", &[&zeros, &side], vec![]);
        let parts: Vec<String> = [&bx, &by, &bs, &bs]
            .iter()
            .map(|t| g.node("Unsqueeze", &[t, &a3], vec![]))
            .collect();
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let p = g.node("Concat", &refs, vec![("axis", Attr::Int(3))]); // [N, h, w, 4]
        let (lo, hi) = (g.scalar(0.01), g.scalar(0.99));
        let above = g.node("Greater", &[&p, &lo], vec![]);
        let below = g.node("Less", &[&p, &hi], vec![]);
        let ok = g.node("And", &[&above, &below], vec![]);
        let ok = g.node("Cast", &[&ok], vec![("to", Attr::Int(1))]);
        let ok = g.node(
            "ReduceMin",
            &[&ok],
            vec![("axes", Attr::Ints(vec![3])), ("keepdims", Attr::Int(0))],
        ); // [N, h, w]
        let ok = g.node("Mul", &[&ok, &tok], vec![]);
        let okb = g.node("Cast", &[&ok], vec![("to", Attr::Int(9))]);
        let okb = g.node("Unsqueeze", &[&okb, &a3], vec![]);
        let q = g.node("Sub", &[&one, &p], vec![]);
        let r = g.node("Div", &[&p, &q], vec![]);
        let logit = g.node("Log", &[&r], vec![]);
        let inf = g.scalar(f32::INFINITY);
        let p = g.node("Where", &[&okb, &logit, &inf], vec![]);
        proposals.push(flat(g, &p, &[4]));
        pvalid.push(flat(g, &ok, &[1]));
        // position encoding over the valid region: cumulative counts of valid cells,
        // normalised by the valid extent of the same column (row)
        let axis = |g: &mut crate::onnx::GraphBuilder,
                    coords: &str,
                    count: &str,
                    line: &str,
                    cross: &str| {
            // coords [1, n] (i + 0.5): cumulative count min(i + 1, count) on valid lines
            let c1 = g.node("Add", &[coords, &half], vec![]);
            let cum = g.node("Min", &[&c1, count], vec![]); // [N, n]
            let cum = g.node("Unsqueeze", &[&cum, line], vec![]);
            let cum = g.node("Mul", &[&cum, cross], vec![]); // [N, h, w]
            let ext = g.node("Unsqueeze", &[count, line], vec![]);
            let ext = g.node("Mul", &[&ext, cross], vec![]);
            let num = g.node("Add", &[&cum, &offset], vec![]);
            let den = g.node("Add", &[&ext, &eps], vec![]);
            let e = g.node("Div", &[&num, &den], vec![]);
            let e = g.node("Mul", &[&e, &tau], vec![]);
            let e = g.node("Unsqueeze", &[&e, &a3], vec![]); // [N, h, w, 1]
            tables.sines(g, &e)
        };
        let py = axis(g, &ys, &ch, &a2, &cols3); // rows: [N, h] → [N, h, 1] × valid columns
        let px = axis(g, &xs, &cw, &ax1, &rows3);
        let yx = g.node("Concat", &[&py, &px], vec![("axis", Attr::Int(3))]);
        positions.push(flat(g, &yx, &[2 * nf as i64]));
    }
    let cat1 = |g: &mut crate::onnx::GraphBuilder, v: &[String]| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        g.node("Concat", &refs, vec![("axis", Attr::Int(1))])
    };
    let l = levels.len() as i64;
    let ratios = cat1(g, &ratios); // [N, 2L]
    let s_r = g.ints(&[0, 1, 1, l, 2]);
    let r5 = g.node("Reshape", &[&ratios, &s_r], vec![]); // [N, 1, 1, L, 2]
    let s_r4 = g.ints(&[0, 1, l, 2]);
    let r4 = g.node("Reshape", &[&ratios, &s_r4], vec![]);
    let ratios4 = g.node("Concat", &[&r4, &r4], vec![("axis", Attr::Int(3))]); // [N, 1, L, 4]
    let centres: Vec<String> = per_level
        .iter()
        .map(|(cx, cy)| {
            // [N, 1, w] and [N, h, 1] → [N, h, w, 1, 2] × ratios → [N, h·w, L, 2]
            let zx = g.node("Mul", &[cy, &zero], vec![]);
            let x = g.node("Add", &[cx, &zx], vec![]);
            let zy = g.node("Mul", &[cx, &zero], vec![]);
            let y = g.node("Add", &[cy, &zy], vec![]);
            let x = g.node("Unsqueeze", &[&x, &a3], vec![]);
            let y = g.node("Unsqueeze", &[&y, &a3], vec![]);
            let xy = g.node("Concat", &[&x, &y], vec![("axis", Attr::Int(3))]); // [N,h,w,2]
            let xy = g.node("Unsqueeze", &[&xy, &a3], vec![]); // [N, h, w, 1, 2]
            let c = g.node("Mul", &[&xy, &r5], vec![]);
            flat(g, &c, &[l, 2])
        })
        .collect();
    let out = EmitPadding {
        tokens: cat1(g, &tokens),
        ratios4,
        centres: cat1(g, &centres),
        proposals: cat1(g, &proposals),
        proposal_valid: cat1(g, &pvalid),
        positions: cat1(g, &positions),
    };
    g.end_fp32();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's nearest interpolation, written from its definition for a whole mask.
    fn torch_nearest_mask(valid: usize, input: usize, out: usize) -> Vec<bool> {
        let scale = input as f32 / out as f32;
        (0..out)
            .map(|r| {
                let src = if out == input {
                    r
                } else {
                    (((r as f32) * scale).floor() as usize).min(input - 1)
                };
                src < valid
            })
            .collect()
    }

    #[test]
    fn counts_follow_the_nearest_rule_and_the_mask_stays_a_prefix() {
        for input in [96usize, 100, 128, 333, 800, 1333] {
            for stride in [8usize, 16, 32, 64, 128] {
                let out = input.div_ceil(stride);
                for valid in 1..=input {
                    let mask = torch_nearest_mask(valid, input, out);
                    let n = level_count(valid, input, out);
                    assert!(mask[..n].iter().all(|&m| m) && mask[n..].iter().all(|&m| !m));
                }
            }
        }
    }

    #[test]
    fn an_unpadded_batch_reduces_to_the_unpadded_formulas() {
        let dev = Device::flex();
        let shapes = [[4, 6], [2, 3]];
        let p = Padding::new(&[[32, 48]], [32, 48], &shapes).unwrap();
        assert!(p.is_trivial());
        assert_eq!(p.counts, vec![vec![[4, 6], [2, 3]]]);
        let (props, valid) = p.proposals(&dev);
        let (want_p, want_v) = super::super::query_selection::token_proposals(&shapes, &dev);
        assert_eq!(props.into_data(), want_p.into_data());
        assert_eq!(valid.into_data(), want_v.into_data());
        let c: Vec<f32> = p.centres(&dev).into_data().try_to_vec().unwrap();
        let want: Vec<f32> = super::super::encoder::token_centres(&shapes, &dev)
            .into_data()
            .try_to_vec()
            .unwrap();
        // [S, L, 2] vs [S, 2]: every level sees the same point when nothing is padded
        for (t, w) in want.chunks(2).enumerate() {
            for l in 0..2 {
                assert_eq!(&c[(t * 2 + l) * 2..(t * 2 + l) * 2 + 2], w);
            }
        }
    }

    #[test]
    fn padded_tokens_are_masked_and_ratios_follow_the_counts() {
        let dev = Device::flex();
        // 128² input, image 1 valid 96 × 112: level 16² at stride 8 → 12 × 14 valid
        let p = Padding::new(&[[128, 128], [96, 112]], [128, 128], &[[16, 16], [8, 8]]).unwrap();
        assert_eq!(p.counts[1], vec![[12, 14], [6, 7]]);
        let r: Vec<f32> = p.ratios(&dev).into_data().try_to_vec().unwrap();
        assert_eq!(
            r,
            vec![
                1.0,
                1.0,
                1.0,
                1.0,
                14.0 / 16.0,
                12.0 / 16.0,
                7.0 / 8.0,
                6.0 / 8.0
            ]
        );
        let t: Vec<f32> = p.tokens(&dev).into_data().try_to_vec().unwrap();
        let s = 16 * 16 + 8 * 8;
        assert!(t[..s].iter().all(|&v| v == 1.0));
        let valid: f32 = t[s..].iter().sum();
        assert_eq!(valid, (12 * 14 + 6 * 7) as f32);
        assert_eq!(t[s + 11 * 16 + 13], 1.0);
        assert_eq!(t[s + 11 * 16 + 14], 0.0);
        assert_eq!(t[s + 12 * 16], 0.0);
        let (props, pv) = p.proposals(&dev);
        let props: Vec<f32> = props.into_data().try_to_vec().unwrap();
        let pv: Vec<f32> = pv.into_data().try_to_vec().unwrap();
        for (i, (&v, box4)) in pv.iter().zip(props.chunks(4)).enumerate() {
            if i >= s && t[i] == 0.0 {
                assert_eq!(v, 0.0);
                assert!(box4.iter().all(|x| x.is_infinite()));
            }
        }
    }

    #[test]
    fn rejects_empty_and_oversized_valid_regions() {
        assert!(Padding::new(&[[0, 10]], [32, 32], &[[4, 4]]).is_err());
        assert!(Padding::new(&[[33, 10]], [32, 32], &[[4, 4]]).is_err());
    }
}
