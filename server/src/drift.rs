//! Where two execution providers part on the same graph and input (e.g. CUDA against CPU), or
//! two graphs of one model (the fp32 export and its `--fp16` rewrite, which keeps every
//! tensor's name): every node's output is made a graph output, both sessions run the same
//! batch, and each output is compared by name (f16 and bf16 tensors as their f32 values). A node *introduces* drift when its output differs by much more than its
//! inputs do; [`attribute`] ranks nodes by that ratio, so a reduced-precision kernel (TF32
//! convolutions, a lossy GPU kernel) shows up by name instead of as one number at the end.
//!
//! The graph is edited at the protobuf wire level, only where it must be: the node list is read
//! (four fields of `NodeProto`) and outputs are appended to the graph (`GraphProto.output`,
//! field 12, names only: ONNX Runtime infers their types). Every other byte is copied as is, so
//! nothing this reader does not know is lost. The server never depends on Burn, whose crate
//! holds the exporter's full ONNX messages; this is the little the server needs.

use std::collections::HashMap;

use codetr_model::{INPUT_IMAGES, INPUT_ORIG_SIZES, INPUT_VALID_SIZES};
use ort::session::Session;
use ort::value::Tensor;

use crate::error::{Result, ServeError};

/// One node of the graph's top level, in graph (topological) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphNode {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

fn bad(m: impl std::fmt::Display) -> ServeError {
    ServeError::Model(format!("not an ONNX model this reader can edit: {m}"))
}

/// Reads a base-128 varint at `*at`.
fn varint(buf: &[u8], at: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or_else(|| bad("truncated varint"))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("varint longer than 10 bytes"))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One field of a message: its number, and its payload for length-delimited fields; `raw` is
/// the whole field (key included) as it lies in the buffer.
struct Field<'a> {
    number: u64,
    payload: Option<&'a [u8]>,
    raw: &'a [u8],
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let start = at;
        let key = varint(buf, &mut at)?;
        let (number, wire) = (key >> 3, key & 7);
        let mut payload = None;
        match wire {
            0 => {
                varint(buf, &mut at)?;
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?).map_err(|_| bad("length"))?;
                let end = at.checked_add(len).ok_or_else(|| bad("length"))?;
                payload = Some(buf.get(at..end).ok_or_else(|| bad("truncated field"))?);
                at = end;
            }
            w => return Err(bad(format!("wire type {w} (field {number})"))),
        }
        let raw = buf.get(start..at).ok_or_else(|| bad("truncated field"))?;
        out.push(Field {
            number,
            payload,
            raw,
        });
    }
    Ok(out)
}

fn string(f: &Field<'_>) -> Result<String> {
    let p = f
        .payload
        .ok_or_else(|| bad("a string field is not length-delimited"))?;
    String::from_utf8(p.to_vec()).map_err(|_| bad("a name is not UTF-8"))
}

/// `ModelProto.graph` (field 7): the single graph of the model.
fn graph(model: &[u8]) -> Result<&[u8]> {
    let mut found = None;
    for f in fields(model)? {
        if f.number == 7 {
            if found.is_some() {
                return Err(bad("more than one graph field"));
            }
            found = f.payload;
        }
    }
    found.ok_or_else(|| bad("no graph"))
}

/// The top-level nodes (`GraphProto.node`, field 1) and the graph's outputs (field 12).
pub fn read_graph(model: &[u8]) -> Result<(Vec<GraphNode>, Vec<String>)> {
    let (mut nodes, mut outputs) = (Vec::new(), Vec::new());
    for f in fields(graph(model)?)? {
        match (f.number, f.payload) {
            (1, Some(p)) => {
                let mut n = GraphNode::default();
                for nf in fields(p)? {
                    match nf.number {
                        1 => n.inputs.push(string(&nf)?),
                        2 => n.outputs.push(string(&nf)?),
                        3 => n.name = string(&nf)?,
                        4 => n.op_type = string(&nf)?,
                        _ => {}
                    }
                }
                nodes.push(n);
            }
            (12, Some(p)) => {
                for vf in fields(p)? {
                    if vf.number == 1 {
                        outputs.push(string(&vf)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok((nodes, outputs))
}

/// `model` with `names` appended to its graph's outputs (untyped `ValueInfoProto`s); every
/// other byte as it was.
pub fn with_outputs(model: &[u8], names: &[String]) -> Result<Vec<u8>> {
    let mut extra = Vec::new();
    for name in names {
        let mut vi = vec![0x0a]; // ValueInfoProto.name: field 1, length-delimited
        put_varint(&mut vi, name.len() as u64);
        vi.extend_from_slice(name.as_bytes());
        extra.push(0x62); // GraphProto.output: field 12, length-delimited
        put_varint(&mut extra, vi.len() as u64);
        extra.extend_from_slice(&vi);
    }
    let mut out = Vec::with_capacity(model.len() + extra.len() + 16);
    for f in fields(model)? {
        match (f.number, f.payload) {
            (7, Some(g)) => {
                out.push(0x3a); // ModelProto.graph: field 7, length-delimited
                put_varint(&mut out, (g.len() + extra.len()) as u64);
                out.extend_from_slice(g);
                out.extend_from_slice(&extra);
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(out)
}

/// The outputs worth comparing: every top-level node's, but constants' (equal by
/// construction) and those already graph outputs, restricted to `ops` when it is not empty.
pub fn exposable(nodes: &[GraphNode], graph_outputs: &[String], ops: &[String]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.op_type != "Constant")
        .filter(|n| ops.is_empty() || ops.iter().any(|o| o == &n.op_type))
        .flat_map(|n| n.outputs.iter())
        .filter(|o| !o.is_empty() && !graph_outputs.contains(o))
        .cloned()
        .collect()
}

/// One tensor's values from a run, as far as comparing them goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
    /// A type the comparison does not read (its name).
    Other(String),
}

/// How one tensor differs between run A (the reference) and run B.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TensorDiff {
    /// Largest |a − b| (floats) or count of differing elements (integers).
    pub max_abs: f64,
    /// Largest |a| (floats; 0 for integers).
    pub ref_max: f64,
    /// `max_abs / ref_max` for floats (the tensor's scale, so a large-valued tensor is not
    /// penalised for the same relative error); the fraction of differing elements for
    /// integers. Infinite when the shapes differ or only B is non-finite.
    pub rel: f64,
}

impl TensorDiff {
    /// Tensors of different sizes: nothing in them can be compared.
    pub const SIZES_DIFFER: Self = Self {
        max_abs: f64::INFINITY,
        ref_max: 0.0,
        rel: f64::INFINITY,
    };
}

/// Compares one tensor of both runs; `None` for types not compared.
pub fn diff(a: &Values, b: &Values) -> Option<TensorDiff> {
    match (a, b) {
        (Values::F32(a), Values::F32(b)) => {
            if a.len() != b.len() {
                return Some(TensorDiff::SIZES_DIFFER);
            }
            let (mut max_abs, mut ref_max) = (0f64, 0f64);
            for (&x, &y) in a.iter().zip(b) {
                let (x, y) = (f64::from(x), f64::from(y));
                let d = if x.is_finite() && y.is_finite() {
                    (x - y).abs()
                } else if x == y || (x.is_nan() && y.is_nan()) {
                    0.0
                } else {
                    f64::INFINITY
                };
                max_abs = max_abs.max(d);
                if x.is_finite() {
                    ref_max = ref_max.max(x.abs());
                }
            }
            let rel = if max_abs == 0.0 {
                0.0
            } else if ref_max > 0.0 {
                max_abs / ref_max
            } else {
                f64::INFINITY
            };
            Some(TensorDiff {
                max_abs,
                ref_max,
                rel,
            })
        }
        (Values::I64(a), Values::I64(b)) => {
            if a.len() != b.len() {
                return Some(TensorDiff::SIZES_DIFFER);
            }
            let n = a.iter().zip(b).filter(|(x, y)| x != y).count();
            Some(TensorDiff {
                max_abs: n as f64,
                ref_max: 0.0,
                rel: if a.is_empty() {
                    0.0
                } else {
                    n as f64 / a.len() as f64
                },
            })
        }
        _ => None,
    }
}

/// Runs `session` on a batch (`pixels` `[N, h, w, 3]` RGB8, `orig` `[N, 2]` original sizes,
/// `valid` `[N, 2]` the sizes each image covers for a letterbox graph, `None` for a stretch
/// one) and returns the named outputs that the graph produced.
pub fn run(
    session: &mut Session,
    pixels: &[u8],
    orig: &[i64],
    valid: Option<&[i64]>,
    [h, w]: [u32; 2],
    names: &[String],
) -> Result<HashMap<String, Values>> {
    let e = |x: ort::Error| ServeError::Runtime(format!("drift run: {x}"));
    let n = orig.len() / 2;
    let images =
        Tensor::from_array(([n, h as usize, w as usize, 3], pixels.to_vec())).map_err(e)?;
    let sizes = Tensor::from_array(([n, 2], orig.to_vec())).map_err(e)?;
    let out = match valid {
        Some(valid) => {
            let valid = Tensor::from_array(([n, 2], valid.to_vec())).map_err(e)?;
            session.run(ort::inputs![
                INPUT_IMAGES => images,
                INPUT_ORIG_SIZES => sizes,
                INPUT_VALID_SIZES => valid,
            ])
        }
        None => session.run(ort::inputs![INPUT_IMAGES => images, INPUT_ORIG_SIZES => sizes]),
    }
    .map_err(e)?;
    let mut got = HashMap::new();
    for name in names {
        let Some(v) = out.get(name.as_str()) else {
            continue;
        };
        let values = if let Ok((_, x)) = v.try_extract_tensor::<f32>() {
            Values::F32(x.to_vec())
        } else if let Ok((_, x)) = v.try_extract_tensor::<half::f16>() {
            Values::F32(x.iter().map(|h| h.to_f32()).collect())
        } else if let Ok((_, x)) = v.try_extract_tensor::<half::bf16>() {
            Values::F32(x.iter().map(|h| h.to_f32()).collect())
        } else if let Ok((_, x)) = v.try_extract_tensor::<i64>() {
            Values::I64(x.to_vec())
        } else {
            Values::Other(format!("{:?}", v.dtype()))
        };
        got.insert(name.clone(), values);
    }
    Ok(got)
}

/// Below this relative difference an input counts as agreeing (fp32 rounding is ~6e-8); the
/// floor keeps a node fed by exactly equal inputs from dividing by zero.
pub const AGREE: f64 = 1e-7;

/// One node's share of the drift.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeDrift {
    /// Position in graph order.
    pub index: usize,
    pub name: String,
    pub op_type: String,
    /// Largest relative difference over the node's compared outputs.
    pub rel: f64,
    /// Largest relative difference over its inputs (0 for graph inputs and initializers,
    /// which both runs share).
    pub input_rel: f64,
    /// `rel / max(input_rel, AGREE)`: how much drift the node adds to what it was given.
    pub gain: f64,
}

/// Each compared node's drift, in graph order: `diffs` maps tensor names to their difference
/// (outputs not compared are absent and count as agreeing when they feed a node, which errs
/// towards blaming the node that reads them).
pub fn attribute(nodes: &[GraphNode], diffs: &HashMap<String, TensorDiff>) -> Vec<NodeDrift> {
    let rel = |t: &String| diffs.get(t).map_or(0.0, |d| d.rel);
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.outputs.iter().any(|o| diffs.contains_key(o)))
        .map(|(index, n)| {
            let out = n.outputs.iter().map(rel).fold(0.0, f64::max);
            let inp = n.inputs.iter().map(rel).fold(0.0, f64::max);
            NodeDrift {
                index,
                name: n.name.clone(),
                op_type: n.op_type.clone(),
                rel: out,
                input_rel: inp,
                gain: out / inp.max(AGREE),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
        put_varint(out, number << 3 | 2);
        put_varint(out, payload.len() as u64);
        out.extend_from_slice(payload);
    }

    /// A model with an ir_version (varint), a producer string, two nodes and one output,
    /// written by hand from the ONNX field numbers.
    fn model() -> Vec<u8> {
        let node = |name: &str, op: &str, ins: &[&str], outs: &[&str]| {
            let mut n = Vec::new();
            for i in ins {
                len_field(&mut n, 1, i.as_bytes());
            }
            for o in outs {
                len_field(&mut n, 2, o.as_bytes());
            }
            len_field(&mut n, 3, name.as_bytes());
            len_field(&mut n, 4, op.as_bytes());
            n
        };
        let mut g = Vec::new();
        len_field(&mut g, 1, &node("c", "Constant", &[], &["k"]));
        len_field(&mut g, 1, &node("conv", "Conv", &["x", "w"], &["y"]));
        len_field(&mut g, 1, &node("add", "Add", &["y", "k"], &["z"]));
        len_field(&mut g, 2, b"g");
        let mut vi = Vec::new();
        len_field(&mut vi, 1, b"z");
        len_field(&mut g, 12, &vi);
        let mut m = vec![0x08, 0x09]; // ir_version 9
        len_field(&mut m, 2, b"codetr");
        len_field(&mut m, 7, &g);
        m.extend_from_slice(&[0x40, 0x96, 0x01]); // field 8 (varint) 150, after the graph
        m
    }

    #[test]
    fn outputs_are_appended_and_every_other_byte_kept() {
        let m = model();
        let (nodes, outs) = read_graph(&m).unwrap();
        assert_eq!(
            nodes.iter().map(|n| n.op_type.as_str()).collect::<Vec<_>>(),
            ["Constant", "Conv", "Add"]
        );
        assert_eq!(nodes[1].inputs, ["x", "w"]);
        assert_eq!(outs, ["z"]);
        let names = exposable(&nodes, &outs, &[]);
        assert_eq!(names, ["y"], "constants and existing outputs are not added");
        assert_eq!(
            exposable(&nodes, &outs, &["Add".into()]),
            Vec::<String>::new()
        );
        let edited = with_outputs(&m, &names).unwrap();
        let (nodes2, outs2) = read_graph(&edited).unwrap();
        assert_eq!(nodes2, nodes);
        assert_eq!(outs2, ["z", "y"]);
        // the fields around the graph survive byte for byte
        assert_eq!(&edited[..10], &m[..10]);
        assert_eq!(&edited[edited.len() - 3..], &[0x40, 0x96, 0x01]);
        // one 5-byte output field (key, length, a 3-byte ValueInfoProto), and the graph's
        // length varint grows by a byte where the graph crosses 127 bytes
        let g = graph(&m).unwrap().len();
        let grown = usize::from(g < 128 && g + 5 >= 128);
        assert_eq!(edited.len(), m.len() + 5 + grown);
    }

    #[test]
    fn malformed_bytes_are_an_error_not_a_panic() {
        let m = model();
        for cut in [1, 5, m.len() / 2, m.len() - 1] {
            assert!(read_graph(&m[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read_graph(&[0x0b]).is_err(), "wire type 3 (groups)");
        assert!(read_graph(&[0xff; 12]).is_err(), "endless varint");
        assert!(read_graph(b"").is_err(), "no graph");
    }

    #[test]
    fn diffs_are_relative_to_the_tensor_scale_and_integers_count_mismatches() {
        let d = diff(
            &Values::F32(vec![100.0, -200.0, 1.0]),
            &Values::F32(vec![100.0, -199.0, 1.5]),
        )
        .unwrap();
        assert_eq!((d.max_abs, d.ref_max, d.rel), (1.0, 200.0, 0.005));
        let d = diff(
            &Values::I64(vec![1, 2, 3, 4]),
            &Values::I64(vec![1, 2, 4, 3]),
        )
        .unwrap();
        assert_eq!((d.max_abs, d.rel), (2.0, 0.5));
        let nan = diff(&Values::F32(vec![1.0]), &Values::F32(vec![f32::NAN])).unwrap();
        assert!(nan.rel.is_infinite());
        let same_nan = diff(&Values::F32(vec![f32::NAN]), &Values::F32(vec![f32::NAN])).unwrap();
        assert_eq!(same_nan.rel, 0.0);
        assert!(
            diff(&Values::F32(vec![1.0]), &Values::F32(vec![1.0, 2.0]))
                .unwrap()
                .rel
                .is_infinite()
        );
        assert!(diff(&Values::Other("bool".into()), &Values::Other("bool".into())).is_none());
    }

    #[test]
    fn the_node_that_adds_drift_gains_most_not_the_ones_that_carry_it() {
        let m = model();
        let (nodes, _) = read_graph(&m).unwrap();
        let mut diffs = std::collections::HashMap::new();
        let d = |rel| TensorDiff {
            max_abs: rel,
            ref_max: 1.0,
            rel,
        };
        diffs.insert("y".to_string(), d(1e-3)); // the conv drifts
        diffs.insert("z".to_string(), d(1.1e-3)); // the add carries it on
        let a = attribute(&nodes, &diffs);
        assert_eq!(a.len(), 2, "the constant has no compared output");
        let conv = a.iter().find(|n| n.name == "conv").unwrap();
        let add = a.iter().find(|n| n.name == "add").unwrap();
        assert_eq!(conv.input_rel, 0.0);
        assert!((conv.gain - 1e4).abs() < 1e-6, "{}", conv.gain);
        assert!((add.gain - 1.1).abs() < 1e-9, "{}", add.gain);
    }
}
