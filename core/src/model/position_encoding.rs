//! Sine position encoding (DETR), normalised, as used by Co-DINO: for a `h × w` map without
//! padding the embedding is a constant, so it is computed once on the host.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Settings of the 2-D sine encoding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinePositionConfig {
    /// Features per axis (`d_model / 2`); the embedding has `2 · num_feats` channels.
    pub num_feats: usize,
    /// Co-DINO uses 20; DETR/HF use 10000.
    pub temperature: f64,
    /// Added to the 1-based cumulative index before normalising: Co-DINO 0.0, Deformable
    /// DETR / HF transformers −0.5.
    pub offset: f64,
    /// Scale of the normalised coordinate (2π).
    pub scale: f64,
}

impl SinePositionConfig {
    pub fn co_dino(d_model: usize) -> Self {
        Self {
            num_feats: d_model / 2,
            temperature: 20.0,
            offset: 0.0,
            scale: std::f64::consts::TAU,
        }
    }

    /// The `[2·num_feats, h, w]` embedding: channels `[0, num_feats)` encode y, the rest x;
    /// within each half, even channels are sines and odd ones cosines of the same frequency.
    pub fn embedding(&self, h: usize, w: usize, device: &Device) -> Tensor<3> {
        self.embedding_valid(h, w, [h, w], device)
    }

    /// [`SinePositionConfig::embedding`] of a map whose top-left `[vh, vw]` is valid (the
    /// rest padding), as the official masked encoding: the coordinates are cumulative counts
    /// of valid cells, normalised by the valid extent of the same column (row). A padded cell
    /// counts 0 in the padded direction and its coordinate is normalised by 0 + eps.
    pub fn embedding_valid(
        &self,
        h: usize,
        w: usize,
        [vh, vw]: [usize; 2],
        device: &Device,
    ) -> Tensor<3> {
        let nf = self.num_feats;
        let eps = 1e-6;
        let dim_t: Vec<f64> = (0..nf)
            .map(|i| self.temperature.powf(2.0 * (i / 2) as f64 / nf as f64))
            .collect();
        let mut out = vec![0f32; 2 * nf * h * w];
        let mut put =
            |c: usize, yy: usize, xx: usize, v: f64| out[(c * h + yy) * w + xx] = v as f32;
        // (cumulative count, extent) along one axis at index i of a line that is valid or not
        let coord = |i: usize, valid: usize, line_valid: bool| -> f64 {
            let (cum, ext) = if line_valid {
                ((i + 1).min(valid) as f64, valid as f64)
            } else {
                (0.0, 0.0)
            };
            (cum + self.offset) / (ext + eps) * self.scale
        };
        for yy in 0..h {
            for xx in 0..w {
                let ye = coord(yy, vh, xx < vw);
                let xe = coord(xx, vw, yy < vh);
                for (i, &d) in dim_t.iter().enumerate() {
                    let (py, px) = (ye / d, xe / d);
                    let (vy, vx) = if i % 2 == 0 {
                        (py.sin(), px.sin())
                    } else {
                        (py.cos(), px.cos())
                    };
                    put(i, yy, xx, vy);
                    put(nf + i, yy, xx, vx);
                }
            }
        }
        Tensor::from_data(TensorData::new(out, [2 * nf, h, w]), device)
    }

    /// ONNX emitter of [`SinePositionConfig::embedding`] for a level whose size the graph
    /// reads at run time: `[h·w, 2·num_feats]`, token-major like the flattened tokens.
    pub fn emit(&self, g: &mut crate::onnx::GraphBuilder, lvl: &crate::onnx::Level) -> String {
        let nf = self.num_feats;
        let tables = self.emit_tables(g, &[1, nf]);
        let eps = g.scalar(1e-6);
        let scale = g.scalar(self.scale as f32);
        let ax1 = g.ints(&[1]);
        let offset = (1.0 + self.offset) as f32;
        let axis = |g: &mut crate::onnx::GraphBuilder, n: &str, nf_: &str| {
            let div = g.node("Add", &[nf_, &eps], vec![]);
            let c = crate::onnx::Level::axis_coords(g, n, offset, &div);
            let c = g.node("Mul", &[&c, &scale], vec![]);
            let c = g.node("Unsqueeze", &[&c, &ax1], vec![]); // [n, 1]
            tables.sines(g, &c) // [n, nf]
        };
        let py = axis(g, &lvl.h_scalar, &lvl.hf);
        let px = axis(g, &lvl.w_scalar, &lvl.wf);
        let y = lvl.broadcast_rows(g, &py, nf as i64);
        let x = lvl.broadcast_cols(g, &px, nf as i64);
        let yx = g.node(
            "Concat",
            &[&y, &x],
            vec![("axis", crate::onnx::builder::Attr::Int(2))],
        );
        let flat = g.ints(&[-1, 2 * nf as i64]);
        g.node("Reshape", &[&yx, &flat], vec![])
    }
}

/// The encoding's frequencies and channel parities as graph constants ([`SinePositionConfig::
/// emit_tables`]), shaped to broadcast against coordinates with a trailing axis of 1.
pub struct EmitTables {
    dim_t: String,
    even: String,
    odd: String,
}

impl SinePositionConfig {
    /// The `[.., num_feats]` tables of the graph emitters, shaped `dims`.
    pub fn emit_tables(&self, g: &mut crate::onnx::GraphBuilder, dims: &[usize]) -> EmitTables {
        let nf = self.num_feats;
        let dim_t: Vec<f32> = (0..nf)
            .map(|i| self.temperature.powf(2.0 * (i / 2) as f64 / nf as f64) as f32)
            .collect();
        let even: Vec<f32> = (0..nf).map(|i| f32::from(u8::from(i % 2 == 0))).collect();
        let odd: Vec<f32> = even.iter().map(|e| 1.0 - e).collect();
        EmitTables {
            dim_t: g.init_f32("pe_dim_t", dims, &dim_t),
            even: g.init_f32("pe_even", dims, &even),
            odd: g.init_f32("pe_odd", dims, &odd),
        }
    }
}

impl EmitTables {
    /// Normalised coordinates `[.., 1]` → `[.., num_feats]`: sines on even channels, cosines
    /// on odd ones, of `coord / dim_t`.
    pub fn sines(&self, g: &mut crate::onnx::GraphBuilder, coord: &str) -> String {
        let p = g.node("Div", &[coord, &self.dim_t], vec![]);
        let sin = g.node("Sin", &[&p], vec![]);
        let cos = g.node("Cos", &[&p], vec![]);
        let sin = g.node("Mul", &[&sin, &self.even], vec![]);
        let cos = g.node("Mul", &[&cos, &self.odd], vec![]);
        g.node("Add", &[&sin, &cos], vec![])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_closed_form_at_a_few_points() {
        let dev = Device::flex();
        let cfg = SinePositionConfig::co_dino(8);
        let e: Vec<f32> = cfg.embedding(3, 5, &dev).into_data().try_to_vec().unwrap();
        let at = |c: usize, y: usize, x: usize| e[(c * 3 + y) * 5 + x];
        let tau = std::f64::consts::TAU;
        // channel 0: sin(y_embed / 1), y=2 → (3 / 3) · 2π
        assert!((at(0, 2, 0) as f64 - (3.0 / (3.0 + 1e-6) * tau).sin()).abs() < 1e-6);
        // channel 4 + 3: cos(x_embed / 20^(2·1/4)) at x = 1
        let xe = 2.0 / (5.0 + 1e-6) * tau;
        let want = (xe / 20f64.powf(0.5)).cos();
        assert!((at(7, 0, 1) as f64 - want).abs() < 1e-6);
    }
}
