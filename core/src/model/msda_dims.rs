//! The shapes of one MSDA call, shared by the dispatcher (`msda`) and the kernels with a
//! hand-written backward (`msda_host`, `msda_chunked`): a leaf, so the kernels and their
//! dispatcher do not import each other.

use burn::tensor::Tensor;

/// Offsets of each level's tokens in the flattened value sequence.
pub fn level_starts(shapes: &[[usize; 2]]) -> Vec<usize> {
    let mut acc = 0;
    shapes
        .iter()
        .map(|[h, w]| {
            let s = acc;
            acc += h * w;
            s
        })
        .collect()
}

/// Dimensions of one call of the sampling core (the kernels with a hand-written backward keep
/// them in their autodiff state).
#[derive(Debug, Clone)]
pub(crate) struct MsdaDims {
    pub b: usize,
    /// Tokens of all levels.
    pub s: usize,
    pub h: usize,
    pub ch: usize,
    pub q: usize,
    pub l: usize,
    pub p: usize,
    pub shapes: Vec<[usize; 2]>,
    pub starts: Vec<usize>,
}

impl MsdaDims {
    /// From [`super::msda::msda_core`]'s `value` `[B, S, H, Ch]` and `locations` `[B, Q, H, L, P, 2]`.
    pub(crate) fn of(value: &Tensor<4>, shapes: &[[usize; 2]], locations: &Tensor<6>) -> Self {
        let [b, s, h, ch] = value.dims();
        let [_, q, _, l, p, _] = locations.dims();
        Self {
            b,
            s,
            h,
            ch,
            q,
            l,
            p,
            shapes: shapes.to_vec(),
            starts: level_starts(shapes),
        }
    }
}
