//! `--fp16`: rewrites an fp32 graph so its weights and compute are fp16, written into the graph
//! itself (TensorRT 11 builds strongly typed networks; its fp16 builder flag is gone).
//!
//! Nodes the emitters marked [`KEEP_FP32`] (MSDA sampling positions, attention softmax and
//! sampling; the postprocess) and nodes producing graph outputs stay fp32. The graph's I/O
//! types do not change. The pass infers every value's element type from the graph inputs,
//! initializers and a rule per op, then walks the nodes in order: a float input whose current
//! precision differs from the node's gets a `Cast` (one per value and direction); `Cast(to =
//! FLOAT)` in an fp16 node becomes `Cast(to = FLOAT16)`; float initializers used only by fp16
//! nodes are stored as fp16, the others stay fp32 (their fp16 users get a `Cast`, which ONNX
//! Runtime folds at load).

use std::collections::HashMap;

use codetr_core::onnx::builder::KEEP_FP32;
use codetr_core::onnx::proto::{
    AttributeProto, AttributeType, ModelProto, NodeProto, TensorProto, dtype, type_proto,
};

use super::{ExportError, Result};

/// What the pass changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Fp16Report {
    /// Nodes computing in fp16.
    pub fp16_nodes: usize,
    /// Nodes kept in fp32.
    pub fp32_nodes: usize,
    /// Casts inserted at fp16/fp32 boundaries.
    pub casts: usize,
    /// Float initializers stored as fp16.
    pub fp16_initializers: usize,
    /// Float initializers kept fp32 (used by fp32 nodes).
    pub fp32_initializers: usize,
}

fn err(m: impl Into<String>) -> ExportError {
    ExportError::Option(format!("fp16 pass: {}", m.into()))
}

fn attr_i(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Element types of `n`'s outputs from its input types.
fn infer(n: &NodeProto, ins: &[Option<i32>]) -> Result<Vec<i32>> {
    let t0 = || {
        ins.first()
            .copied()
            .flatten()
            .ok_or_else(|| err(format!("{}: untyped input", n.name)))
    };
    let k = n.output.len();
    Ok(match n.op_type.as_str() {
        "Cast" => vec![attr_i(n, "to").ok_or_else(|| err("Cast without `to`"))? as i32],
        "Shape" | "Size" | "ArgMax" | "ArgMin" | "NonZero" => vec![dtype::INT64; k],
        "TopK" => vec![t0()?, dtype::INT64],
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Not"
        | "IsNaN" | "IsInf" => vec![dtype::BOOL; k],
        "Where" => vec![
            ins.get(1)
                .copied()
                .flatten()
                .ok_or_else(|| err("Where: untyped input"))?,
        ],
        "Constant" | "ConstantOfShape" => {
            let t = n
                .attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref());
            vec![t.map_or(dtype::FLOAT, |t| t.data_type)]
        }
        "Transpose"
        | "Sub"
        | "Div"
        | "Conv"
        | "Relu"
        | "MaxPool"
        | "Add"
        | "Reshape"
        | "InstanceNormalization"
        | "Mul"
        | "Concat"
        | "MatMul"
        | "Softmax"
        | "Slice"
        | "Flatten"
        | "GridSample"
        | "ReduceSum"
        | "ReduceMax"
        | "ReduceMin"
        | "ReduceMean"
        | "LayerNormalization"
        | "Unsqueeze"
        | "Squeeze"
        | "Expand"
        | "GatherElements"
        | "Gather"
        | "GatherND"
        | "Sigmoid"
        | "Sin"
        | "Cos"
        | "Clip"
        | "Max"
        | "Min"
        | "Log"
        | "Exp"
        | "Sqrt"
        | "Pow"
        | "Neg"
        | "Abs"
        | "Mod"
        | "Floor"
        | "Ceil"
        | "Identity"
        | "Tile"
        | "Split"
        | "Range"
        | "Gemm"
        | "Tanh"
        | "Erf"
        | "Pad"
        | "CumSum" => {
            vec![t0()?; k]
        }
        other => {
            return Err(err(format!(
                "no type rule for op {other} (node {})",
                n.name
            )));
        }
    })
}

fn is_float(t: i32) -> bool {
    t == dtype::FLOAT || t == dtype::FLOAT16
}

fn to_f16(t: &TensorProto) -> Result<TensorProto> {
    if !t.raw_data.len().is_multiple_of(4) {
        return Err(err(format!("initializer {}: raw data is not f32", t.name)));
    }
    let raw = t
        .raw_data
        .chunks_exact(4)
        .flat_map(|b| {
            half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
        })
        .collect();
    Ok(TensorProto {
        data_type: dtype::FLOAT16,
        raw_data: raw,
        ..t.clone()
    })
}

/// Rewrites `model` in place (see the module docs).
pub fn convert(model: &mut ModelProto) -> Result<Fp16Report> {
    let g = model.graph.as_mut().ok_or_else(|| err("no graph"))?;
    // 1. Element types of every value in the fp32 graph.
    let mut ty: HashMap<String, i32> = HashMap::new();
    for v in &g.input {
        let t = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(tt)) => tt.elem_type,
            _ => return Err(err(format!("input {} is not a tensor", v.name))),
        };
        ty.insert(v.name.clone(), t);
    }
    for t in &g.initializer {
        ty.insert(t.name.clone(), t.data_type);
    }
    for n in &g.node {
        let ins: Vec<Option<i32>> = n
            .input
            .iter()
            .map(|i| {
                if i.is_empty() {
                    None
                } else {
                    ty.get(i).copied()
                }
            })
            .collect();
        for (o, t) in n.output.iter().zip(infer(n, &ins)?) {
            ty.insert(o.clone(), t);
        }
    }
    if ty.values().any(|&t| t == dtype::FLOAT16) {
        return Err(err("the graph already holds fp16 values"));
    }
    // 2. Which nodes stay fp32: the marked ones and those producing a graph output.
    let outputs: std::collections::HashSet<&str> =
        g.output.iter().map(|o| o.name.as_str()).collect();
    let keep: Vec<bool> = g
        .node
        .iter()
        .map(|n| n.doc_string == KEEP_FP32 || n.output.iter().any(|o| outputs.contains(o.as_str())))
        .collect();
    // 3. Float initializers: fp16 unless an fp32 node reads them.
    let mut read_by_fp32: std::collections::HashSet<&str> = Default::default();
    for (n, &k) in g.node.iter().zip(&keep) {
        if k {
            read_by_fp32.extend(n.input.iter().map(String::as_str));
        }
    }
    let mut rep: HashMap<String, i32> = HashMap::new();
    let mut report = Fp16Report::default();
    let mut inits = Vec::with_capacity(g.initializer.len());
    for t in &g.initializer {
        if t.data_type == dtype::FLOAT && !read_by_fp32.contains(t.name.as_str()) {
            inits.push(to_f16(t)?);
            rep.insert(t.name.clone(), dtype::FLOAT16);
            report.fp16_initializers += 1;
        } else {
            if t.data_type == dtype::FLOAT {
                report.fp32_initializers += 1;
            }
            inits.push(t.clone());
            rep.insert(t.name.clone(), t.data_type);
        }
    }
    g.initializer = inits;
    for v in &g.input {
        rep.insert(v.name.clone(), ty[&v.name]);
    }
    // 4. Walk the nodes: casts at boundaries, fp16 attributes, output precisions.
    let mut casts: HashMap<(String, i32), String> = HashMap::new();
    let mut nodes = Vec::with_capacity(g.node.len() * 2);
    for (mut n, k) in std::mem::take(&mut g.node).into_iter().zip(keep) {
        let want = if k { dtype::FLOAT } else { dtype::FLOAT16 };
        for i in n.input.iter_mut().filter(|i| !i.is_empty()) {
            let have = *rep
                .get(i.as_str())
                .ok_or_else(|| err(format!("value {i} used before defined")))?;
            if is_float(have) && have != want {
                let key = (i.clone(), want);
                let name = match casts.get(&key) {
                    Some(c) => c.clone(),
                    None => {
                        let c = format!(
                            "{i}_as_{}",
                            if want == dtype::FLOAT { "f32" } else { "f16" }
                        );
                        nodes.push(NodeProto {
                            input: vec![i.clone()],
                            output: vec![c.clone()],
                            name: format!("Cast_{c}"),
                            op_type: "Cast".into(),
                            attribute: vec![AttributeProto {
                                name: "to".into(),
                                r#type: AttributeType::Int as i32,
                                i: i64::from(want),
                                ..Default::default()
                            }],
                            ..Default::default()
                        });
                        report.casts += 1;
                        casts.insert(key, c.clone());
                        c
                    }
                };
                *i = name;
            }
        }
        if !k {
            if n.op_type == "Cast" {
                for a in n
                    .attribute
                    .iter_mut()
                    .filter(|a| a.name == "to" && a.i == i64::from(dtype::FLOAT))
                {
                    a.i = i64::from(dtype::FLOAT16);
                }
            }
            for a in n.attribute.iter_mut() {
                if let Some(t) = a.t.as_mut().filter(|t| t.data_type == dtype::FLOAT) {
                    *t = to_f16(t)?;
                }
            }
        }
        for o in &n.output {
            let t = ty[o];
            rep.insert(o.clone(), if t == dtype::FLOAT { want } else { t });
        }
        if k {
            report.fp32_nodes += 1;
        } else {
            report.fp16_nodes += 1;
        }
        nodes.push(n);
    }
    g.node = nodes;
    for o in &g.output {
        if rep.get(&o.name) != ty.get(&o.name) {
            return Err(err(format!("output {} changed type", o.name)));
        }
    }
    Ok(report)
}
