//! Static shape inference of an exported graph at a concrete batch and input size, and the
//! bound that follows from it: the largest intermediate tensor, and the largest batch whose
//! every tensor stays under 2^31 elements.
//!
//! Why: CUDA kernels (ONNX Runtime's Concat among them) index with 32-bit integers; a tensor
//! of 2^31 elements or more fails at run time with `cudaErrorInvalidValue`, after tens of GB
//! were allocated. The exporter can see it coming from shapes alone.
//!
//! The pass walks the nodes in order with every shape concrete (the graph's `N`, and `H`,
//! `W` of a `--dynamic-size` graph, substituted) and carries the values of small tensors
//! (shape arithmetic: `Shape`, `Concat`, `Slice`, `Gather`, … feeding `Reshape`, `Expand`,
//! `Range`), so shapes computed in the graph resolve too. An op without a rule here is an
//! error, never a silent guess: a new op in an emitter must get its rule.

use std::collections::HashMap;

use codetr_core::onnx::proto::{
    AttributeProto, ModelProto, NodeProto, TensorProto, dtype, tensor_shape_proto, type_proto,
};

use super::{ExportError, Result};

/// Tensors of this many elements or more cannot be indexed by 32-bit CUDA kernels.
pub const ELEMENT_LIMIT: u64 = 1 << 31;

/// Values of tensors up to this many elements are carried (shape arithmetic).
const MAX_VALUE_LEN: u64 = 64;

/// One value's inferred shape (and, for small tensors, its contents).
#[derive(Debug, Clone, PartialEq)]
struct Info {
    shape: Vec<i64>,
    /// ONNX element type.
    elem: i32,
    /// Contents (row-major), for small tensors whose inputs were known.
    value: Option<Vec<f64>>,
}

impl Info {
    fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d.max(0) as u64).product()
    }
}

/// The largest tensor of a graph at one batch size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Largest {
    /// Value name.
    pub value: String,
    /// Op type of the node producing it.
    pub op: String,
    /// Node name.
    pub node: String,
    pub shape: Vec<i64>,
    pub elements: u64,
}

/// The graph's intermediate-size bound at one input size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bound {
    /// `[H, W]` the shapes were inferred at.
    pub input_size: [usize; 2],
    /// The largest tensor at batch 1.
    pub at_batch_1: Largest,
    /// The largest batch at which every tensor has fewer than [`ELEMENT_LIMIT`] elements.
    pub max_batch: u64,
}

impl Bound {
    /// Whether a batch of `n` stays within the limit.
    pub fn fits(&self, n: u64) -> bool {
        n <= self.max_batch
    }
}

fn err(node: &NodeProto, m: impl std::fmt::Display) -> ExportError {
    ExportError::Option(format!(
        "shape inference: node {} ({}): {m}",
        node.name, node.op_type
    ))
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn tensor_info(t: &TensorProto) -> Info {
    let shape = t.dims.clone();
    let n: u64 = shape.iter().map(|&d| d.max(0) as u64).product();
    let value = (n <= MAX_VALUE_LEN)
        .then(|| decode(t))
        .flatten()
        .filter(|v| v.len() as u64 == n);
    Info {
        shape,
        elem: t.data_type,
        value,
    }
}

fn decode(t: &TensorProto) -> Option<Vec<f64>> {
    let raw = &t.raw_data;
    Some(match t.data_type {
        x if x == dtype::FLOAT => raw
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        x if x == dtype::INT64 => raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64)
            .collect(),
        x if x == dtype::INT32 => raw
            .chunks_exact(4)
            .map(|b| f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        x if x == dtype::FLOAT16 => raw
            .chunks_exact(2)
            .map(|b| f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32()))
            .collect(),
        x if x == dtype::BOOL || x == dtype::UINT8 => raw.iter().map(|&b| f64::from(b)).collect(),
        _ => return None,
    })
}

fn is_int(elem: i32) -> bool {
    elem == dtype::INT64 || elem == dtype::INT32 || elem == dtype::UINT8 || elem == dtype::BOOL
}

/// Numpy broadcasting of two shapes.
fn broadcast(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Row-major strides.
fn strides(shape: &[i64]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1].max(0) as usize;
    }
    s
}

/// Element-wise binary op on broadcast values.
fn binary_values(a: &Info, b: &Info, out: &[i64], f: impl Fn(f64, f64) -> f64) -> Option<Vec<f64>> {
    let (va, vb) = (a.value.as_ref()?, b.value.as_ref()?);
    let n: usize = out.iter().map(|&d| d.max(0) as usize).product();
    let so = strides(out);
    let idx = |shape: &[i64], flat: usize| -> usize {
        let st = strides(shape);
        let off = out.len() - shape.len();
        let mut k = 0;
        for (i, &d) in shape.iter().enumerate() {
            let coord = (flat / so[i + off]) % out[i + off].max(1) as usize;
            if d != 1 {
                k += coord * st[i];
            }
        }
        k
    };
    Some(
        (0..n)
            .map(|i| f(va[idx(&a.shape, i)], vb[idx(&b.shape, i)]))
            .collect(),
    )
}

fn norm_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64).max(0) as usize
    } else {
        axis as usize
    }
}

struct Ctx<'a> {
    vals: HashMap<&'a str, Info>,
}

impl<'a> Ctx<'a> {
    fn get(&self, n: &NodeProto, i: usize) -> Result<&Info> {
        let name = n
            .input
            .get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| err(n, format!("missing input {i}")))?;
        self.vals
            .get(name.as_str())
            .ok_or_else(|| err(n, format!("input {name} used before defined")))
    }

    fn opt(&self, n: &NodeProto, i: usize) -> Option<&Info> {
        n.input
            .get(i)
            .filter(|s| !s.is_empty())
            .and_then(|s| self.vals.get(s.as_str()))
    }

    fn ints(&self, n: &NodeProto, i: usize) -> Result<Vec<i64>> {
        let v = self.get(n, i)?;
        v.value
            .as_ref()
            .map(|v| v.iter().map(|&x| x as i64).collect())
            .ok_or_else(|| err(n, format!("input {i} must be known to infer shapes")))
    }
}

fn with_value(shape: Vec<i64>, elem: i32, value: Option<Vec<f64>>) -> Info {
    Info { shape, elem, value }
}

/// Infers the outputs of one node.
fn infer_node(c: &Ctx<'_>, n: &NodeProto) -> Result<Vec<Info>> {
    let op = n.op_type.as_str();
    let same = |i: &Info, value: Option<Vec<f64>>| with_value(i.shape.clone(), i.elem, value);
    Ok(match op {
        "Identity" => vec![c.get(n, 0)?.clone()],
        "Relu"
        | "Sigmoid"
        | "Sin"
        | "Cos"
        | "Log"
        | "Exp"
        | "Sqrt"
        | "Neg"
        | "Abs"
        | "Floor"
        | "Ceil"
        | "Erf"
        | "Tanh"
        | "Softmax"
        | "InstanceNormalization"
        | "Clip"
        | "CumSum"
        | "Not"
        | "IsNaN"
        | "IsInf" => {
            let a = c.get(n, 0)?;
            let f: Option<fn(f64) -> f64> = match op {
                "Neg" => Some(|x| -x),
                "Abs" => Some(f64::abs),
                "Floor" => Some(f64::floor),
                "Ceil" => Some(f64::ceil),
                "Sqrt" => Some(f64::sqrt),
                "Not" => Some(|x| if x == 0.0 { 1.0 } else { 0.0 }),
                _ => None,
            };
            let v = f.and_then(|f| a.value.as_ref().map(|v| v.iter().map(|&x| f(x)).collect()));
            let elem = if matches!(op, "Not" | "IsNaN" | "IsInf") {
                dtype::BOOL
            } else {
                a.elem
            };
            vec![with_value(a.shape.clone(), elem, v)]
        }
        "LayerNormalization" => {
            let a = c.get(n, 0)?;
            let mut out = vec![same(a, None)];
            // Optional Mean / InvStdDev outputs: reduced over the normalised axes.
            let axis = norm_axis(attr_i(n, "axis", -1), a.shape.len());
            let mut red = a.shape.clone();
            for d in red.iter_mut().skip(axis) {
                *d = 1;
            }
            for _ in 1..n.output.len() {
                out.push(with_value(red.clone(), dtype::FLOAT, None));
            }
            out
        }
        "Cast" => {
            let a = c.get(n, 0)?;
            let to = attr_i(n, "to", 0) as i32;
            let v = a.value.as_ref().map(|v| {
                v.iter()
                    .map(|&x| match to {
                        t if t == dtype::BOOL => f64::from(x != 0.0),
                        t if is_int(t) => x.trunc(),
                        _ => x,
                    })
                    .collect()
            });
            vec![with_value(a.shape.clone(), to, v)]
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Mod" | "Equal" | "Less"
        | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" => {
            let (a, b) = (c.get(n, 0)?, c.get(n, 1)?);
            let shape = broadcast(&a.shape, &b.shape)
                .ok_or_else(|| err(n, format!("cannot broadcast {:?} {:?}", a.shape, b.shape)))?;
            let int = is_int(a.elem);
            let f: fn(f64, f64) -> f64 = match op {
                "Add" => |x, y| x + y,
                "Sub" => |x, y| x - y,
                "Mul" => |x, y| x * y,
                "Div" => |x, y| x / y,
                "Pow" => f64::powf,
                "Max" => f64::max,
                "Min" => f64::min,
                "Mod" => |x, y| x - (x / y).floor() * y,
                "Equal" => |x, y| f64::from(x == y),
                "Less" => |x, y| f64::from(x < y),
                "LessOrEqual" => |x, y| f64::from(x <= y),
                "Greater" => |x, y| f64::from(x > y),
                "GreaterOrEqual" => |x, y| f64::from(x >= y),
                "And" => |x, y| f64::from(x != 0.0 && y != 0.0),
                _ => |x, y| f64::from(x != 0.0 || y != 0.0),
            };
            let mut v = binary_values(a, b, &shape, f);
            if int && op == "Div" {
                v = v.map(|v| v.into_iter().map(f64::trunc).collect());
            }
            let elem = if matches!(
                op,
                "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or"
            ) {
                dtype::BOOL
            } else {
                a.elem
            };
            vec![with_value(shape, elem, v)]
        }
        "Where" => {
            let (cnd, x, y) = (c.get(n, 0)?, c.get(n, 1)?, c.get(n, 2)?);
            let shape = broadcast(&cnd.shape, &x.shape)
                .and_then(|s| broadcast(&s, &y.shape))
                .ok_or_else(|| err(n, "cannot broadcast"))?;
            vec![with_value(shape, x.elem, None)]
        }
        "Shape" => {
            let a = c.get(n, 0)?;
            let r = a.shape.len() as i64;
            let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
            let (s, e) = (clamp(attr_i(n, "start", 0)), clamp(attr_i(n, "end", r)));
            let dims: Vec<f64> = a.shape[s as usize..e.max(s) as usize]
                .iter()
                .map(|&d| d as f64)
                .collect();
            vec![with_value(
                vec![dims.len() as i64],
                dtype::INT64,
                Some(dims),
            )]
        }
        "Size" => {
            let a = c.get(n, 0)?;
            vec![with_value(
                vec![],
                dtype::INT64,
                Some(vec![a.numel() as f64]),
            )]
        }
        "Constant" => {
            let t = attr(n, "value")
                .and_then(|a| a.t.as_ref())
                .ok_or_else(|| err(n, "Constant without a tensor `value`"))?;
            vec![tensor_info(t)]
        }
        "ConstantOfShape" => {
            let shape = c.ints(n, 0)?;
            let t = attr(n, "value").and_then(|a| a.t.as_ref());
            let elem = t.map_or(dtype::FLOAT, |t| t.data_type);
            let fill = t.and_then(decode).and_then(|v| v.first().copied());
            let numel: i64 = shape.iter().product();
            let v = fill
                .filter(|_| numel as u64 <= MAX_VALUE_LEN)
                .map(|f| vec![f; numel as usize]);
            vec![with_value(shape, elem, v)]
        }
        "Reshape" => {
            let a = c.get(n, 0)?;
            let target = c.ints(n, 1)?;
            let allow_zero = attr_i(n, "allowzero", 0) != 0;
            let mut out: Vec<i64> = target
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d == 0 && !allow_zero {
                        a.shape.get(i).copied().unwrap_or(0)
                    } else {
                        d
                    }
                })
                .collect();
            let known: i64 = out.iter().filter(|&&d| d != -1).product();
            let total = a.numel() as i64;
            if let Some(pos) = out.iter().position(|&d| d == -1) {
                if known == 0 || total % known != 0 {
                    return Err(err(
                        n,
                        format!("cannot reshape {:?} to {target:?}", a.shape),
                    ));
                }
                out[pos] = total / known;
            } else if known != total {
                return Err(err(
                    n,
                    format!("cannot reshape {:?} to {target:?}", a.shape),
                ));
            }
            vec![with_value(out, a.elem, a.value.clone())]
        }
        "Flatten" => {
            let a = c.get(n, 0)?;
            let axis = norm_axis(attr_i(n, "axis", 1), a.shape.len());
            let lead: i64 = a.shape[..axis].iter().product();
            let tail: i64 = a.shape[axis..].iter().product();
            vec![with_value(vec![lead, tail], a.elem, a.value.clone())]
        }
        "Transpose" => {
            let a = c.get(n, 0)?;
            let r = a.shape.len();
            let perm = attr_ints(n, "perm").unwrap_or_else(|| (0..r as i64).rev().collect());
            if perm.len() != r {
                return Err(err(n, format!("perm {perm:?} for rank {r}")));
            }
            let shape = perm.iter().map(|&p| a.shape[p as usize]).collect();
            let v = if r <= 1 { a.value.clone() } else { None };
            vec![with_value(shape, a.elem, v)]
        }
        "Unsqueeze" => {
            let a = c.get(n, 0)?;
            let axes = c.ints(n, 1)?;
            let r = a.shape.len() + axes.len();
            let mut axes: Vec<usize> = axes.iter().map(|&x| norm_axis(x, r)).collect();
            axes.sort_unstable();
            let mut shape = a.shape.clone();
            for ax in axes {
                shape.insert(ax.min(shape.len()), 1);
            }
            vec![with_value(shape, a.elem, a.value.clone())]
        }
        "Squeeze" => {
            let a = c.get(n, 0)?;
            let shape = match c.opt(n, 1) {
                Some(_) => {
                    let axes: Vec<usize> = c
                        .ints(n, 1)?
                        .iter()
                        .map(|&x| norm_axis(x, a.shape.len()))
                        .collect();
                    a.shape
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !axes.contains(i))
                        .map(|(_, &d)| d)
                        .collect()
                }
                None => a.shape.iter().copied().filter(|&d| d != 1).collect(),
            };
            vec![with_value(shape, a.elem, a.value.clone())]
        }
        "Concat" => {
            let first = c.get(n, 0)?;
            let r = first.shape.len();
            let axis = norm_axis(attr_i(n, "axis", 0), r);
            let mut shape = first.shape.clone();
            let mut value = if r == 1 { first.value.clone() } else { None };
            for i in 1..n.input.len() {
                let x = c.get(n, i)?;
                if x.shape.len() != r {
                    return Err(err(n, "inputs of different ranks"));
                }
                shape[axis] += x.shape[axis];
                value = match (value, &x.value) {
                    (Some(mut v), Some(w)) if r == 1 => {
                        v.extend_from_slice(w);
                        Some(v)
                    }
                    _ => None,
                };
            }
            vec![with_value(shape, first.elem, value)]
        }
        "Slice" => {
            let a = c.get(n, 0)?;
            let starts = c.ints(n, 1)?;
            let ends = c.ints(n, 2)?;
            let r = a.shape.len();
            let axes: Vec<usize> = match c.opt(n, 3) {
                Some(_) => c.ints(n, 3)?.iter().map(|&x| norm_axis(x, r)).collect(),
                None => (0..starts.len()).collect(),
            };
            let steps = match c.opt(n, 4) {
                Some(_) => c.ints(n, 4)?,
                None => vec![1; starts.len()],
            };
            let mut shape = a.shape.clone();
            let mut ranges: Vec<(i64, i64, i64)> = a.shape.iter().map(|&d| (0, d, 1)).collect();
            for (k, &ax) in axes.iter().enumerate() {
                let d = a.shape[ax];
                let step = steps[k];
                if step == 0 {
                    return Err(err(n, "step 0"));
                }
                let fix = |v: i64, lo: i64, hi: i64| {
                    let v = if v < 0 { v + d } else { v };
                    v.clamp(lo, hi)
                };
                let (s, e) = if step > 0 {
                    (fix(starts[k], 0, d), fix(ends[k], 0, d))
                } else {
                    (fix(starts[k], 0, d - 1), fix(ends[k], -1, d - 1))
                };
                let len = if step > 0 {
                    ((e - s).max(0) + step - 1) / step
                } else {
                    ((s - e).max(0) + (-step) - 1) / (-step)
                };
                shape[ax] = len;
                ranges[ax] = (s, e, step);
            }
            let v = match (&a.value, r) {
                (Some(v), 1) => {
                    let (s, _, step) = ranges[0];
                    Some(
                        (0..shape[0])
                            .map(|i| v[(s + i * step) as usize])
                            .collect::<Vec<_>>(),
                    )
                }
                _ => None,
            };
            vec![with_value(shape, a.elem, v)]
        }
        "Gather" => {
            let (a, idx) = (c.get(n, 0)?, c.get(n, 1)?);
            let axis = norm_axis(attr_i(n, "axis", 0), a.shape.len());
            let mut shape = a.shape[..axis].to_vec();
            shape.extend_from_slice(&idx.shape);
            shape.extend_from_slice(&a.shape[axis + 1..]);
            let v = match (&a.value, &idx.value, a.shape.len()) {
                (Some(v), Some(ix), 1) => {
                    let d = a.shape[0];
                    ix.iter()
                        .map(|&i| {
                            let i = i as i64;
                            let i = if i < 0 { i + d } else { i };
                            v.get(i as usize).copied()
                        })
                        .collect::<Option<Vec<_>>>()
                }
                _ => None,
            };
            vec![with_value(shape, a.elem, v)]
        }
        "GatherElements" => {
            let (a, idx) = (c.get(n, 0)?, c.get(n, 1)?);
            vec![with_value(idx.shape.clone(), a.elem, None)]
        }
        "GatherND" => {
            let (a, idx) = (c.get(n, 0)?, c.get(n, 1)?);
            let b = attr_i(n, "batch_dims", 0) as usize;
            let last = *idx
                .shape
                .last()
                .ok_or_else(|| err(n, "indices of rank 0"))? as usize;
            let mut shape = idx.shape[..idx.shape.len() - 1].to_vec();
            shape.extend_from_slice(a.shape.get(b + last..).unwrap_or(&[]));
            vec![with_value(shape, a.elem, None)]
        }
        "Expand" => {
            let a = c.get(n, 0)?;
            let target = c.ints(n, 1)?;
            let shape = broadcast(&a.shape, &target)
                .ok_or_else(|| err(n, format!("cannot expand {:?} to {target:?}", a.shape)))?;
            vec![with_value(shape, a.elem, None)]
        }
        "Tile" => {
            let a = c.get(n, 0)?;
            let reps = c.ints(n, 1)?;
            let shape = a.shape.iter().zip(&reps).map(|(d, r)| d * r).collect();
            vec![with_value(shape, a.elem, None)]
        }
        "MatMul" => {
            let (a, b) = (c.get(n, 0)?, c.get(n, 1)?);
            let (mut sa, mut sb) = (a.shape.clone(), b.shape.clone());
            let (va, vb) = (sa.len() == 1, sb.len() == 1);
            if va {
                sa.insert(0, 1);
            }
            if vb {
                sb.push(1);
            }
            let (ra, rb) = (sa.len(), sb.len());
            if sa[ra - 1] != sb[rb - 2] {
                return Err(err(n, format!("MatMul {:?} × {:?}", a.shape, b.shape)));
            }
            let mut shape = broadcast(&sa[..ra - 2], &sb[..rb - 2])
                .ok_or_else(|| err(n, "cannot broadcast batch dims"))?;
            if !va {
                shape.push(sa[ra - 2]);
            }
            if !vb {
                shape.push(sb[rb - 1]);
            }
            vec![with_value(shape, a.elem, None)]
        }
        "Gemm" => {
            let (a, b) = (c.get(n, 0)?, c.get(n, 1)?);
            let m = if attr_i(n, "transA", 0) != 0 {
                a.shape[1]
            } else {
                a.shape[0]
            };
            let k = if attr_i(n, "transB", 0) != 0 {
                b.shape[0]
            } else {
                b.shape[1]
            };
            vec![with_value(vec![m, k], a.elem, None)]
        }
        "Conv" | "MaxPool" | "AveragePool" => {
            let x = c.get(n, 0)?;
            let spatial = x.shape.len().saturating_sub(2);
            let (out_c, kernel) = if op == "Conv" {
                let w = c.get(n, 1)?;
                (w.shape[0], w.shape[2..].to_vec())
            } else {
                let k = attr_ints(n, "kernel_shape").ok_or_else(|| err(n, "no kernel_shape"))?;
                (x.shape[1], k)
            };
            if attr(n, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") {
                return Err(err(n, "auto_pad is not supported"));
            }
            let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 2 * spatial]);
            let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1; spatial]);
            let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1; spatial]);
            let ceil = attr_i(n, "ceil_mode", 0) != 0;
            let mut shape = vec![x.shape[0], out_c];
            for i in 0..spatial {
                let eff = dil[i] * (kernel[i] - 1) + 1;
                let span = x.shape[2 + i] + pads[i] + pads[i + spatial] - eff;
                let o = if ceil {
                    (span + strides[i] - 1) / strides[i] + 1
                } else {
                    span / strides[i] + 1
                };
                shape.push(o);
            }
            vec![with_value(shape, x.elem, None)]
        }
        "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceMean" | "ReduceProd" => {
            let a = c.get(n, 0)?;
            let r = a.shape.len();
            let axes: Option<Vec<i64>> = match attr_ints(n, "axes") {
                Some(v) => Some(v),
                None => match c.opt(n, 1) {
                    Some(_) => Some(c.ints(n, 1)?),
                    None => None,
                },
            };
            let axes: Vec<usize> = match axes {
                Some(v) if !v.is_empty() => v.iter().map(|&x| norm_axis(x, r)).collect(),
                _ if attr_i(n, "noop_with_empty_axes", 0) != 0 => vec![],
                _ => (0..r).collect(),
            };
            let keep = attr_i(n, "keepdims", 1) != 0;
            let shape = a
                .shape
                .iter()
                .enumerate()
                .filter_map(|(i, &d)| match (axes.contains(&i), keep) {
                    (true, true) => Some(1),
                    (true, false) => None,
                    (false, _) => Some(d),
                })
                .collect();
            vec![with_value(shape, a.elem, None)]
        }
        "ArgMax" | "ArgMin" => {
            let a = c.get(n, 0)?;
            let axis = norm_axis(attr_i(n, "axis", 0), a.shape.len());
            let mut shape = a.shape.clone();
            if attr_i(n, "keepdims", 1) != 0 {
                shape[axis] = 1;
            } else {
                shape.remove(axis);
            }
            vec![with_value(shape, dtype::INT64, None)]
        }
        "TopK" => {
            let a = c.get(n, 0)?;
            let k = *c.ints(n, 1)?.first().ok_or_else(|| err(n, "empty K"))?;
            let axis = norm_axis(attr_i(n, "axis", -1), a.shape.len());
            let mut shape = a.shape.clone();
            shape[axis] = k.min(shape[axis]);
            vec![
                with_value(shape.clone(), a.elem, None),
                with_value(shape, dtype::INT64, None),
            ]
        }
        "Range" => {
            let (s, l, d) = (c.get(n, 0)?, c.get(n, 1)?, c.get(n, 2)?);
            let scalar = |i: &Info| i.value.as_ref().and_then(|v| v.first().copied());
            let (Some(s0), Some(l0), Some(d0)) = (scalar(s), scalar(l), scalar(d)) else {
                return Err(err(n, "Range bounds must be known to infer shapes"));
            };
            let len = ((l0 - s0) / d0).ceil().max(0.0) as i64;
            let v = (len as u64 <= MAX_VALUE_LEN)
                .then(|| (0..len).map(|i| s0 + i as f64 * d0).collect());
            vec![with_value(vec![len], s.elem, v)]
        }
        "Split" => {
            let a = c.get(n, 0)?;
            let axis = norm_axis(attr_i(n, "axis", 0), a.shape.len());
            let k = n.output.len() as i64;
            let parts = match c.opt(n, 1) {
                Some(_) => c.ints(n, 1)?,
                None => match attr_ints(n, "split") {
                    Some(v) => v,
                    None => {
                        let d = a.shape[axis];
                        let each = (d + k - 1) / k;
                        (0..k).map(|i| each.min(d - i * each)).collect()
                    }
                },
            };
            parts
                .iter()
                .map(|&p| {
                    let mut s = a.shape.clone();
                    s[axis] = p;
                    with_value(s, a.elem, None)
                })
                .collect()
        }
        "GridSample" => {
            // X [N, C, H, W], grid [N, Ho, Wo, 2] → [N, C, Ho, Wo]
            let (x, grid) = (c.get(n, 0)?, c.get(n, 1)?);
            if x.shape.len() != 4 || grid.shape.len() != 4 {
                return Err(err(n, "only 2-D GridSample"));
            }
            let shape = vec![x.shape[0], x.shape[1], grid.shape[1], grid.shape[2]];
            vec![with_value(shape, x.elem, None)]
        }
        "Pad" => {
            let a = c.get(n, 0)?;
            let pads = c.ints(n, 1)?;
            let r = a.shape.len();
            let shape = (0..r).map(|i| a.shape[i] + pads[i] + pads[i + r]).collect();
            vec![with_value(shape, a.elem, None)]
        }
        other => return Err(err(n, format!("no shape rule for op {other}"))),
    })
}

/// One node output's inferred shape.
struct Shaped {
    value: String,
    op: String,
    node: String,
    shape: Vec<i64>,
}

impl Shaped {
    fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d.max(0) as u64).product()
    }
}

/// Every node output's shape at batch `batch` and, for a graph with a symbolic size, input
/// size `hw`.
fn walk(model: &ModelProto, batch: u64, hw: [usize; 2]) -> Result<Vec<Shaped>> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| ExportError::Option("shape inference: no graph".into()))?;
    let mut c = Ctx {
        vals: HashMap::new(),
    };
    for t in &g.initializer {
        c.vals.insert(t.name.as_str(), tensor_info(t));
    }
    for v in &g.input {
        let Some(type_proto::Value::TensorType(tt)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(ExportError::Option(format!(
                "shape inference: input {} is not a tensor",
                v.name
            )));
        };
        let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
        let rank = dims.len();
        let shape = dims
            .iter()
            .enumerate()
            .map(|(i, d)| match &d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(x)) => *x,
                // Symbolic: the batch first; H and W of an NHWC image input.
                _ if i == 0 => batch as i64,
                _ if rank == 4 && i == 1 => hw[0] as i64,
                _ if rank == 4 && i == 2 => hw[1] as i64,
                _ => 1,
            })
            .collect();
        c.vals
            .insert(v.name.as_str(), with_value(shape, tt.elem_type, None));
    }
    let mut out = Vec::with_capacity(g.node.len());
    for n in &g.node {
        let infos = infer_node(&c, n)?;
        if infos.len() < n.output.len() {
            return Err(err(n, format!("{} outputs inferred", infos.len())));
        }
        for (name, info) in n.output.iter().zip(infos) {
            if name.is_empty() {
                continue;
            }
            out.push(Shaped {
                value: name.clone(),
                op: n.op_type.clone(),
                node: n.name.clone(),
                shape: info.shape.clone(),
            });
            c.vals.insert(name.as_str(), info);
        }
    }
    Ok(out)
}

/// Every node output's name and shape at batch `batch` (and input size `hw` where the
/// graph's is symbolic), in node order.
pub fn infer(model: &ModelProto, batch: u64, hw: [usize; 2]) -> Result<Vec<(String, Vec<i64>)>> {
    Ok(walk(model, batch, hw)?
        .into_iter()
        .map(|s| (s.value, s.shape))
        .collect())
}

/// The largest node output of `model` at batch `batch` (and input size `hw` where the graph's
/// is symbolic).
pub fn largest(model: &ModelProto, batch: u64, hw: [usize; 2]) -> Result<Largest> {
    let all = walk(model, batch, hw)?;
    // The first of equal sizes: where such a tensor is made, not a Reshape of it.
    let best = all
        .into_iter()
        .reduce(|a, b| if b.elements() > a.elements() { b } else { a })
        .ok_or_else(|| ExportError::Option("shape inference: the graph has no nodes".into()))?;
    Ok(Largest {
        elements: best.elements(),
        value: best.value,
        op: best.op,
        node: best.node,
        shape: best.shape,
    })
}

/// The bound of `model` at input size `hw`: the largest tensor at batch 1 and the largest
/// batch within [`ELEMENT_LIMIT`]. Every tensor of the graph grows at most linearly with the
/// batch (`a + b·N`), so two inferences (N = 1, 2) give each one's growth; the batch found is
/// checked by a third inference.
pub fn bound(model: &ModelProto, hw: [usize; 2]) -> Result<Bound> {
    let one = walk(model, 1, hw)?;
    let two = walk(model, 2, hw)?;
    let mut max_batch: u64 = 1 << 20;
    for (a, b) in one.iter().zip(&two) {
        let (s1, s2) = (a.elements(), b.elements());
        let slope = s2.saturating_sub(s1);
        let base = s1.saturating_sub(slope);
        if base >= ELEMENT_LIMIT {
            max_batch = 0;
        } else if let Some(n) = (ELEMENT_LIMIT - 1 - base).checked_div(slope) {
            // slope 0: the tensor does not grow with the batch
            max_batch = max_batch.min(n);
        }
    }
    let at_batch_1 = largest(model, 1, hw)?;
    let check = |n: u64| largest(model, n, hw).map(|l| l.elements < ELEMENT_LIMIT);
    if (max_batch > 0 && !check(max_batch)?) || (max_batch < 1 << 20 && check(max_batch + 1)?) {
        return Err(ExportError::Option(format!(
            "shape inference: tensor sizes are not linear in the batch (bound {max_batch})"
        )));
    }
    Ok(Bound {
        input_size: hw,
        at_batch_1,
        max_batch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use codetr_core::onnx::builder::{Attr, Dim, ElemType, GraphBuilder};

    /// `x` `[N, 1000, 1000]` → Concat of three along axis 1 → `[N, 3000, 1000]`, then a
    /// Reshape computed from `Shape` and a ReduceSum: the bound is the Concat's, found through
    /// the shape arithmetic.
    fn graph() -> ModelProto {
        let mut g = GraphBuilder::new("t");
        let x = g
            .input(
                "x",
                ElemType::F32,
                &[Dim::Named("N".into()), Dim::Fixed(1000), Dim::Fixed(1000)],
            )
            .unwrap();
        let c = g.node("Concat", &[&x, &x, &x], vec![("axis", Attr::Int(1))]);
        let sh = g.node("Shape", &[&c], vec![]);
        let (s0, s1) = (g.ints(&[0]), g.ints(&[1]));
        let n = g.node("Slice", &[&sh, &s0, &s1], vec![]);
        let tail = g.ints(&[-1, 500]);
        let target = g.node("Concat", &[&n, &tail], vec![("axis", Attr::Int(0))]);
        let r = g.node("Reshape", &[&c, &target], vec![]); // [N, 6000, 500]
        let ax = g.ints(&[1]);
        let y = g.node("ReduceSum", &[&r, &ax], vec![("keepdims", Attr::Int(0))]);
        g.output(
            &y,
            "y",
            ElemType::F32,
            &[Dim::Named("N".into()), Dim::Fixed(500)],
        )
        .unwrap();
        g.finish(17, "test", vec![])
    }

    #[test]
    fn shapes_follow_shape_arithmetic() {
        let m = graph();
        let shapes: HashMap<String, Vec<i64>> = infer(&m, 3, [0, 0]).unwrap().into_iter().collect();
        assert_eq!(shapes["y"], vec![3, 500]);
        assert!(shapes.values().any(|s| s == &vec![3, 6000, 500]));
    }

    #[test]
    fn bound_is_the_largest_batch_under_two_to_the_31() {
        let b = bound(&graph(), [0, 0]).unwrap();
        assert_eq!(b.at_batch_1.op, "Concat");
        assert_eq!(b.at_batch_1.elements, 3_000_000);
        // 3e6 · 715 = 2.145e9 < 2^31 = 2.147e9 ≤ 3e6 · 716
        assert_eq!(b.max_batch, 715);
        assert!(b.fits(715) && !b.fits(716));
    }

    #[test]
    fn an_op_without_a_rule_is_an_error() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", ElemType::F32, &[Dim::Fixed(2)]).unwrap();
        let y = g.node("NonMaxSuppression", &[&x], vec![]);
        g.output(&y, "y", ElemType::F32, &[Dim::Fixed(2)]).unwrap();
        let e = infer(&g.finish(17, "t", vec![]), 1, [0, 0]).unwrap_err();
        assert!(
            e.to_string()
                .contains("no shape rule for op NonMaxSuppression"),
            "{e}"
        );
    }
}
