//! The multi-scale levels' sizes as graph values, so that one emitter serves both a
//! fixed-size export (the sizes are constants) and `--dynamic-size` (the sizes are read from
//! the feature maps with `Shape`, never written into a shape tensor with ScatterND, which
//! TensorRT refuses).

use super::builder::{Attr, GraphBuilder};

/// One level's size: `h`, `w` and the level's token range in the flattened sequence.
#[derive(Debug, Clone)]
pub struct Level {
    /// int64 `[1]`
    pub h: String,
    /// int64 `[1]`
    pub w: String,
    /// int64 `[]` (for `Range`)
    pub h_scalar: String,
    /// int64 `[]`
    pub w_scalar: String,
    /// int64 `[1]`: `h · w`
    pub hw: String,
    /// int64 `[1]`: first token of the level
    pub start: String,
    /// int64 `[1]`: one past its last token
    pub end: String,
    /// float `[1]`: `h` as a float
    pub hf: String,
    /// float `[1]`: `w` as a float
    pub wf: String,
    /// `[h, w]` when the export has a fixed input size.
    pub fixed: Option<[i64; 2]>,
}

/// A level dimension inside a shape argument ([`Level::shape`]).
#[derive(Debug, Clone, Copy)]
pub enum LevelDim {
    H,
    W,
    /// `h · w`
    Hw,
}

impl Level {
    /// int64 `[k]`: `head`, the level's `dims`, then `tail`: a constant at a fixed size, else a
    /// Concat of the `Shape`-derived values (never a ScatterND).
    pub fn shape(
        &self,
        g: &mut GraphBuilder,
        head: &[i64],
        dims: &[LevelDim],
        tail: &[i64],
    ) -> String {
        if let Some([h, w]) = self.fixed {
            let mut v = head.to_vec();
            v.extend(dims.iter().map(|d| match d {
                LevelDim::H => h,
                LevelDim::W => w,
                LevelDim::Hw => h * w,
            }));
            v.extend_from_slice(tail);
            return g.ints(&v);
        }
        let mut parts: Vec<String> = Vec::with_capacity(dims.len() + 2);
        if !head.is_empty() {
            parts.push(g.ints(head));
        }
        parts.extend(dims.iter().map(|d| match d {
            LevelDim::H => self.h.clone(),
            LevelDim::W => self.w.clone(),
            LevelDim::Hw => self.hw.clone(),
        }));
        if !tail.is_empty() {
            parts.push(g.ints(tail));
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        g.node("Concat", &refs, vec![("axis", Attr::Int(0))])
    }

    /// `[h, k]` per-row features → `[h, w, k]` (the same row for every column).
    pub fn broadcast_rows(&self, g: &mut GraphBuilder, rows: &str, k: i64) -> String {
        let ax = g.ints(&[1]);
        let r = g.node("Unsqueeze", &[rows, &ax], vec![]);
        let to = self.shape(g, &[], &[LevelDim::H, LevelDim::W], &[k]);
        g.node("Expand", &[&r, &to], vec![])
    }

    /// `[w, k]` per-column features → `[h, w, k]` (the same column for every row).
    pub fn broadcast_cols(&self, g: &mut GraphBuilder, cols: &str, k: i64) -> String {
        let ax = g.ints(&[0]);
        let c = g.node("Unsqueeze", &[cols, &ax], vec![]);
        let to = self.shape(g, &[], &[LevelDim::H, LevelDim::W], &[k]);
        g.node("Expand", &[&c, &to], vec![])
    }

    /// float `[n]`: `(Range(0, n) + offset) / divisor`, token coordinates along one axis
    /// (`n` an int64 scalar, `divisor` float `[1]`): the same f32 operations as the host tables.
    pub fn axis_coords(g: &mut GraphBuilder, n: &str, offset: f32, divisor: &str) -> String {
        let (z, one) = (g.init_i64("r0", &[], &[0]), g.init_i64("r1", &[], &[1]));
        let r = g.node("Range", &[&z, n, &one], vec![]);
        let r = g.node("Cast", &[&r], vec![("to", Attr::Int(1))]);
        let off = g.scalar(offset);
        let r = g.node("Add", &[&r, &off], vec![]);
        g.node("Div", &[&r, divisor], vec![])
    }

    /// float `[h·w, 2]`: the `(x + 0.5)/w, (y + 0.5)/h` centre of every token, row-major.
    pub fn centres(&self, g: &mut GraphBuilder) -> String {
        let ax = g.ints(&[1]);
        let xs = Self::axis_coords(g, &self.w_scalar, 0.5, &self.wf);
        let xs = g.node("Unsqueeze", &[&xs, &ax], vec![]); // [w, 1]
        let ys = Self::axis_coords(g, &self.h_scalar, 0.5, &self.hf);
        let ys = g.node("Unsqueeze", &[&ys, &ax], vec![]); // [h, 1]
        let x = self.broadcast_cols(g, &xs, 1);
        let y = self.broadcast_rows(g, &ys, 1);
        let xy = g.node("Concat", &[&x, &y], vec![("axis", Attr::Int(2))]);
        let flat = g.ints(&[-1, 2]);
        g.node("Reshape", &[&xy, &flat], vec![])
    }
}

/// Every level, plus the static shapes when the export has a fixed input size.
#[derive(Debug, Clone)]
pub struct Levels {
    /// `Some([h_l, w_l] per level)` for a fixed-size export: emitters then bake tables
    /// (positions, proposals) as constants, exactly as computed for training.
    pub fixed: Option<Vec<[usize; 2]>>,
    pub levels: Vec<Level>,
}

impl Levels {
    /// Constant levels of a fixed-size export.
    pub fn fixed(g: &mut GraphBuilder, shapes: &[[usize; 2]]) -> Self {
        let mut start = 0i64;
        let levels = shapes
            .iter()
            .map(|&[h, w]| {
                let (h, w) = (h as i64, w as i64);
                let l = Level {
                    h: g.ints(&[h]),
                    w: g.ints(&[w]),
                    h_scalar: g.init_i64("h", &[], &[h]),
                    w_scalar: g.init_i64("w", &[], &[w]),
                    hw: g.ints(&[h * w]),
                    start: g.ints(&[start]),
                    end: g.ints(&[start + h * w]),
                    hf: g.init_f32("hf", &[1], &[h as f32]),
                    wf: g.init_f32("wf", &[1], &[w as f32]),
                    fixed: Some([h, w]),
                };
                start += h * w;
                l
            })
            .collect();
        Self {
            fixed: Some(shapes.to_vec()),
            levels,
        }
    }

    /// Levels read from the feature maps `[N, C, h_l, w_l]` (a dynamic-size export). The
    /// nodes are kept fp32 in an fp16 export: they are sizes, and positions are made from them.
    pub fn from_maps(g: &mut GraphBuilder, maps: &[String]) -> Self {
        g.begin_fp32();
        let (i2, i3) = (g.init_i64("i", &[], &[2]), g.init_i64("i", &[], &[3]));
        let zero = g.ints(&[0]);
        let ax0 = g.ints(&[0]);
        let mut start = zero;
        let levels = maps
            .iter()
            .map(|m| {
                let shape = g.node("Shape", &[m], vec![]);
                let h_scalar = g.node("Gather", &[&shape, &i2], vec![("axis", Attr::Int(0))]);
                let w_scalar = g.node("Gather", &[&shape, &i3], vec![("axis", Attr::Int(0))]);
                let h = g.node("Unsqueeze", &[&h_scalar, &ax0], vec![]);
                let w = g.node("Unsqueeze", &[&w_scalar, &ax0], vec![]);
                let hw = g.node("Mul", &[&h, &w], vec![]);
                let end = g.node("Add", &[&start, &hw], vec![]);
                let hf = g.node("Cast", &[&h], vec![("to", Attr::Int(1))]);
                let wf = g.node("Cast", &[&w], vec![("to", Attr::Int(1))]);
                let l = Level {
                    h,
                    w,
                    h_scalar,
                    w_scalar,
                    hw,
                    start: start.clone(),
                    end: end.clone(),
                    hf,
                    wf,
                    fixed: None,
                };
                start = end;
                l
            })
            .collect();
        g.end_fp32();
        Self {
            fixed: None,
            levels,
        }
    }

    /// Per-level token tables `[h_l·w_l, k]` → one `[1, S, k]` in token order.
    pub fn concat_tokens(g: &mut GraphBuilder, per_level: &[String]) -> String {
        let refs: Vec<&str> = per_level.iter().map(String::as_str).collect();
        let all = g.node("Concat", &refs, vec![("axis", Attr::Int(0))]);
        let ax0 = g.ints(&[0]);
        g.node("Unsqueeze", &[&all, &ax0], vec![])
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }
}
