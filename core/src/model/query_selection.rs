//! Two-stage mixed query selection (DINO): every encoder token proposes a box; the top-K by
//! class score become the decoder's initial reference boxes; the content queries are learned.

use crate::model::autocast as ac;
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::encoder::xavier_linear;

/// The fixed proposal of every token, in inverse-sigmoid space, `[1, S, 4]`, and the token
/// validity `[1, S, 1]` (1.0 valid / 0.0 not). A token's box is its centre with side
/// `0.05·2^level`; it is valid when all four values lie in (0.01, 0.99). Invalid proposals are
/// +inf (their boxes decode to 1.0, as in the official code).
pub fn token_proposals(shapes: &[[usize; 2]], device: &Device) -> (Tensor<3>, Tensor<3>) {
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let mut props = Vec::with_capacity(s * 4);
    let mut valid = Vec::with_capacity(s);
    for (lvl, &[h, w]) in shapes.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                let (p, ok) = super::padding::proposal(lvl, x, y, [h, w]);
                valid.push(if ok { 1.0f32 } else { 0.0 });
                props.extend(p.map(|v| if ok { v } else { f32::INFINITY }));
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(props, [1, s, 4]), device),
        Tensor::from_data(TensorData::new(valid, [1, s, 1]), device),
    )
}

/// ONNX emitter of [`token_proposals`]: (proposals `[1, S, 4]`, validity `[1, S, 1]`),
/// constants at a fixed input size, else computed from the run-time level sizes with the same
/// f32 operations (kept fp32 in an fp16 export).
pub fn emit_token_proposals(
    g: &mut crate::onnx::GraphBuilder,
    levels: &crate::onnx::Levels,
) -> crate::Result<(String, String)> {
    use crate::onnx::LevelDim;
    use crate::onnx::builder::Attr;
    use crate::onnx::emit::host;
    if let Some(shapes) = &levels.fixed {
        let (props, valid) = token_proposals(shapes, &Device::flex());
        let (pd, vd) = (props.dims(), valid.dims());
        return Ok((
            g.init_f32("proposals", &pd, &host(props)?),
            g.init_f32("valid", &vd, &host(valid)?),
        ));
    }
    g.begin_fp32();
    let mut per = Vec::with_capacity(levels.len());
    for (lvl, l) in levels.levels.iter().enumerate() {
        let xy = l.centres(g); // [hw, 2]
        let wh = 0.05f32 * (1u32 << lvl) as f32;
        let wh = g.init_f32("prop_wh", &[1, 2], &[wh, wh]);
        let to = l.shape(g, &[], &[LevelDim::Hw], &[2]);
        let wh = g.node("Expand", &[&wh, &to], vec![]);
        per.push(g.node("Concat", &[&xy, &wh], vec![("axis", Attr::Int(1))]));
    }
    let refs: Vec<&str> = per.iter().map(String::as_str).collect();
    let p = g.node("Concat", &refs, vec![("axis", Attr::Int(0))]); // [S, 4]
    let (lo, hi, one) = (g.scalar(0.01), g.scalar(0.99), g.scalar(1.0));
    let above = g.node("Greater", &[&p, &lo], vec![]);
    let below = g.node("Less", &[&p, &hi], vec![]);
    let ok = g.node("And", &[&above, &below], vec![]);
    let okf = g.node("Cast", &[&ok], vec![("to", Attr::Int(1))]);
    // valid when all four are inside: the minimum over the box of 1.0/0.0
    let valid = g.node(
        "ReduceMin",
        &[&okf],
        vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(1))],
    ); // [S, 1]
    let okrow = g.node("Cast", &[&valid], vec![("to", Attr::Int(9))]);
    let q = g.node("Sub", &[&one, &p], vec![]);
    let r = g.node("Div", &[&p, &q], vec![]);
    let logit = g.node("Log", &[&r], vec![]);
    let inf = g.scalar(f32::INFINITY);
    let props = g.node("Where", &[&okrow, &logit, &inf], vec![]);
    let ax0 = g.ints(&[0]);
    let props = g.node("Unsqueeze", &[&props, &ax0], vec![]);
    let valid = g.node("Unsqueeze", &[&valid, &ax0], vec![]);
    g.end_fp32();
    Ok((props, valid))
}

/// The name of the graph's query-selection `TopK` node (its second output: the `[N, K]`
/// selected token indices), so that `codetr-export --check` can read the selection.
pub const QUERY_SELECTION_NODE: &str = "query_selection_topk";

/// The encoder-output projection and the learned content queries.
#[derive(Module, Debug)]
pub struct QuerySelection {
    /// `d → d` applied to the (validity-masked) memory before scoring.
    pub enc_output: Linear,
    pub enc_output_norm: LayerNorm,
    /// `[K, d]` learned content queries (the same for every image).
    pub query_embed: Param<Tensor<2>>,
}

/// What selection hands to the decoder (and, in training, to the encoder loss).
pub struct Selected {
    /// `[B, K, d]`
    pub content: Tensor<3>,
    /// `[B, K, 4]` initial reference boxes (sigmoid space, detached).
    pub reference: Tensor<3>,
    /// `[B, K, C]` class logits of the selected tokens.
    pub enc_logits: Tensor<3>,
    /// `[B, K, 4]` boxes of the selected tokens (sigmoid, with gradient).
    pub enc_boxes: Tensor<3>,
    /// `[B, K]` indices of the selected tokens.
    pub indices: Tensor<2, Int>,
}

impl QuerySelection {
    pub fn new(d: usize, num_queries: usize, device: &Device) -> Self {
        Self {
            enc_output: xavier_linear(d, d, device),
            enc_output_norm: LayerNormConfig::new(d).init(device),
            query_embed: Param::from_tensor(Tensor::random(
                [num_queries, d],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                device,
            )),
        }
    }

    /// `memory`: `[B, S, d]`; `score`/`regress`: the encoder's class and box branches; with
    /// `padding`, padded tokens propose nothing and proposals span each valid region. `given`
    /// (`[B, K]` token indices, each below `S`) replaces the top-K choice: `codetr-export
    /// --check` runs the graph's own selection through Burn, so that near-tied proposals taken
    /// in another order (float noise decides between them) do not hide whether everything else
    /// agrees.
    pub fn forward(
        &self,
        memory: Tensor<3>,
        shapes: &[[usize; 2]],
        padding: Option<&super::padding::Padding>,
        score: impl Fn(Tensor<3>) -> Tensor<3>,
        regress: impl Fn(Tensor<3>) -> Tensor<3>,
        given: Option<Tensor<2, Int>>,
    ) -> Selected {
        let device = memory.device();
        let [b, _s, d] = memory.dims();
        let k = self.query_embed.dims()[0];
        let (props, valid) = match padding {
            Some(p) => p.proposals(&device),
            None => token_proposals(shapes, &device),
        };
        let out = self
            .enc_output_norm
            .forward(ac::linear(&self.enc_output, memory * valid));
        let logits = score(out.clone()); // [B, S, C]
        let c = logits.dims()[2];
        let coords_unact = regress(out) + props; // [B, S, 4]
        let indices = match given {
            Some(i) => i,
            None => {
                let best = logits.clone().max_dim(2).reshape([b, logits.dims()[1]]);
                // ties by lower index, as the graph's TopK: which tied tokens become queries
                // matters
                super::topk::topk_ties_by_index(best, k).1 // [B, K]
            }
        };
        let idx3 = |n: usize| indices.clone().reshape([b, k, 1]).expand([b, k, n]);
        let sel_coords = coords_unact.gather(1, idx3(4));
        let enc_boxes = burn::tensor::activation::sigmoid(sel_coords);
        Selected {
            content: self.query_embed.val().reshape([1, k, d]).expand([b, k, d]),
            reference: enc_boxes.clone().detach(),
            enc_logits: logits.gather(1, idx3(c)),
            enc_boxes,
            indices,
        }
    }
}

impl QuerySelection {
    /// ONNX emitter of [`QuerySelection::forward`] at inference: `memory` `[N, S, d]` →
    /// (content `[N, K, d]`, reference boxes `[N, K, 4]`).
    pub fn emit(
        &self,
        g: &mut crate::onnx::GraphBuilder,
        memory: &str,
        levels: &crate::onnx::Levels,
        score: &Linear,
        regress: &super::decoder::BoxHead,
        padding: Option<&super::padding::EmitPadding>,
    ) -> crate::Result<(String, String)> {
        use crate::onnx::builder::Attr;
        use crate::onnx::emit::{host, layer_norm, linear};
        let (props, valid) = match padding {
            Some(p) => (p.proposals.clone(), p.proposal_valid.clone()),
            None => emit_token_proposals(g, levels)?,
        };
        let m = g.node("Mul", &[memory, &valid], vec![]);
        let o = linear(g, &self.enc_output, &m)?;
        let o = layer_norm(g, &self.enc_output_norm, &o)?;
        let logits = linear(g, score, &o)?;
        let delta = regress.emit(g, &o)?;
        let coords = g.node("Add", &[&delta, &props], vec![]);
        let ax2 = g.ints(&[2]);
        let best = g.node(
            "ReduceMax",
            &[&logits],
            vec![("axes", Attr::Ints(vec![2])), ("keepdims", Attr::Int(0))],
        );
        let [k, d] = self.query_embed.dims();
        let kk = g.ints(&[k as i64]);
        let tk = g.node_n("TopK", &[&best, &kk], vec![("axis", Attr::Int(1))], 2);
        g.name_last_node(QUERY_SELECTION_NODE);
        let idx = g.node("Unsqueeze", &[&tk[1], &ax2], vec![]);
        let four = g.ints(&[1, 1, 4]);
        let idx = g.node("Expand", &[&idx, &four], vec![]);
        let sel = g.node(
            "GatherElements",
            &[&coords, &idx],
            vec![("axis", Attr::Int(1))],
        );
        let reference = g.node("Sigmoid", &[&sel], vec![]);
        let qe = self.query_embed.val().reshape([1, k, d]);
        let qe = g.init_f32("query_embed", &[1, k, d], &host(qe)?);
        // [N, K, d]: the learned content queries broadcast over the batch
        let shape = g.node("Shape", &[memory], vec![]);
        let (s0, s1, a0) = (g.ints(&[0]), g.ints(&[1]), g.ints(&[0]));
        let n = g.node("Slice", &[&shape, &s0, &s1, &a0], vec![]);
        let kd = g.ints(&[k as i64, d as i64]);
        let target = g.node("Concat", &[&n, &kd], vec![("axis", Attr::Int(0))]);
        let content = g.node("Expand", &[&qe, &target], vec![]);
        Ok((content, reference))
    }
}
