//! `GraphBuilder`: typed graph inputs/outputs, initializers, nodes with attributes, and
//! deterministic value names (a counter per builder), so the same model and flags always
//! serialise to the same bytes.

use std::collections::BTreeSet;

use prost::Message;

use super::proto::{
    AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, dtype,
    tensor_shape_proto, type_proto,
};
use crate::error::{Error, Result};

/// Element types of graph inputs, outputs and initializers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    F32,
    F16,
    U8,
    I32,
    I64,
    Bool,
}

impl ElemType {
    pub fn onnx(self) -> i32 {
        match self {
            ElemType::F32 => dtype::FLOAT,
            ElemType::F16 => dtype::FLOAT16,
            ElemType::U8 => dtype::UINT8,
            ElemType::I32 => dtype::INT32,
            ElemType::I64 => dtype::INT64,
            ElemType::Bool => dtype::BOOL,
        }
    }
}

/// One dimension of a graph input/output: fixed or symbolic (e.g. `"N"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Floats(Vec<f32>),
    Str(String),
    Tensor(TensorProto),
}

fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = AttributeType::Int as i32;
            a.i = i;
        }
        Attr::Ints(v) => {
            a.r#type = AttributeType::Ints as i32;
            a.ints = v;
        }
        Attr::Float(f) => {
            a.r#type = AttributeType::Float as i32;
            a.f = f;
        }
        Attr::Floats(v) => {
            a.r#type = AttributeType::Floats as i32;
            a.floats = v;
        }
        Attr::Str(s) => {
            a.r#type = AttributeType::String as i32;
            a.s = s.into_bytes();
        }
        Attr::Tensor(t) => {
            a.r#type = AttributeType::Tensor as i32;
            a.t = Some(t);
        }
    }
    a
}

/// The declaration of a graph input or output `name`.
pub fn value_info(name: &str, elem: ElemType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem.onnx(),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// A tensor constant (initializer or `Constant` value) with raw little-endian data.
pub fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dtype::FLOAT,
        name: name.to_string(),
        doc_string: String::new(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

pub fn tensor_i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dtype::INT64,
        name: name.to_string(),
        doc_string: String::new(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Builds one graph. Value names are `{hint}_{n}` with a per-builder counter: deterministic.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    counter: usize,
    taken: BTreeSet<String>,
    /// Nesting depth of [`GraphBuilder::begin_fp32`] regions.
    fp32_depth: usize,
}

/// `doc_string` of nodes that an fp16 export must keep in fp32 (MSDA sampling positions,
/// attention softmax and sampling; the postprocess): see `codetr-export --fp16`.
pub const KEEP_FP32: &str = "codetr:keep-fp32";

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Nodes added until the matching [`GraphBuilder::end_fp32`] are marked [`KEEP_FP32`].
    pub fn begin_fp32(&mut self) {
        self.fp32_depth += 1;
    }

    /// Ends the innermost [`GraphBuilder::begin_fp32`] region.
    pub fn end_fp32(&mut self) {
        self.fp32_depth = self.fp32_depth.saturating_sub(1);
    }

    /// A fresh value name.
    pub fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let n = format!("{hint}_{}", self.counter);
            if self.taken.insert(n.clone()) {
                return n;
            }
        }
    }

    fn claim(&mut self, name: &str) -> Result<()> {
        if self.taken.insert(name.to_string()) {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                what: "onnx graph",
                message: format!("value name {name:?} used twice"),
            })
        }
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: ElemType, dims: &[Dim]) -> Result<String> {
        self.claim(name)?;
        self.inputs.push(value_info(name, elem, dims));
        Ok(name.to_string())
    }

    /// Exposes `value` as the graph output `name` (through an Identity when named otherwise).
    pub fn output(&mut self, value: &str, name: &str, elem: ElemType, dims: &[Dim]) -> Result<()> {
        if value != name {
            self.claim(name)?;
            self.nodes.push(NodeProto {
                input: vec![value.to_string()],
                output: vec![name.to_string()],
                name: format!("output_{name}"),
                op_type: "Identity".into(),
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, elem, dims));
        Ok(())
    }

    /// A float initializer of shape `dims`.
    pub fn init_f32(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(tensor_f32(&name, dims, data));
        name
    }

    /// An int64 initializer (shapes, axes, indices).
    pub fn init_i64(&mut self, hint: &str, dims: &[usize], data: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(tensor_i64(&name, dims, data));
        name
    }

    /// A 1-D int64 constant, the common case for Reshape/Slice/Unsqueeze arguments.
    pub fn ints(&mut self, data: &[i64]) -> String {
        self.init_i64("c", &[data.len()], data)
    }

    /// A scalar float constant.
    pub fn scalar(&mut self, v: f32) -> String {
        self.init_f32("s", &[], &[v])
    }

    /// Adds a node with `n_out` outputs; returns their names.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        n_out: usize,
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n_out).map(|_| self.fresh(&op.to_lowercase())).collect();
        let name = format!("{op}_{}", self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outs.clone(),
            name,
            op_type: op.to_string(),
            domain: String::new(),
            attribute: attrs.into_iter().map(|(k, v)| attribute(k, v)).collect(),
            doc_string: if self.fp32_depth > 0 {
                KEEP_FP32.to_string()
            } else {
                String::new()
            },
        });
        outs
    }

    /// Names the last added node `name` (node names carry no meaning for a runtime; a fixed
    /// one lets a tool find that node in the written graph).
    pub fn name_last_node(&mut self, name: &str) {
        if let Some(n) = self.nodes.last_mut() {
            n.name = name.to_string();
        }
    }

    /// A single-output node.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.node_n(op, inputs, attrs, 1).remove(0)
    }

    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Values stored in initializers.
    pub fn num_weights(&self) -> usize {
        self.initializers
            .iter()
            .map(|t| t.dims.iter().product::<i64>().max(1) as usize)
            .sum()
    }

    /// The model: opset `opset` of the default domain only (no custom ops), IR version 8.
    /// Initializers no node reads (a fixed-size export's unused level constants) are dropped.
    pub fn finish(self, opset: i64, producer: &str, metadata: Vec<(String, String)>) -> ModelProto {
        let used: BTreeSet<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.input.iter().cloned())
            .chain(self.outputs.iter().map(|o| o.name.clone()))
            .collect();
        let initializers: Vec<TensorProto> = self
            .initializers
            .into_iter()
            .filter(|t| used.contains(&t.name))
            .collect();
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            producer_name: producer.to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            domain: String::new(),
            model_version: 1,
            doc_string: String::new(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: initializers,
                doc_string: String::new(),
                input: self.inputs,
                output: self.outputs,
                value_info: vec![],
            }),
            metadata_props: metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
        }
    }
}

/// Serialises a model (protobuf bytes).
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Parses a model's protobuf bytes.
pub fn decode(bytes: &[u8]) -> Result<ModelProto> {
    ModelProto::decode(bytes).map_err(|e| Error::InvalidArgument {
        what: "onnx model",
        message: format!("not an ONNX model: {e}"),
    })
}

/// Writes a model atomically (temp + fsync + rename): no partial file on any error. The bytes
/// are [`encode`]'s, streamed message by message (never the whole model a second time in
/// memory: a weight is encoded, written and dropped). Returns the file's length.
pub fn write(model: &ModelProto, path: &std::path::Path) -> Result<u64> {
    let mut written = 0u64;
    codetr_data::fsutil::write_atomic_with(path, |f| {
        written = write_to(model, f)?;
        Ok(())
    })?;
    Ok(written)
}

/// Streams [`encode`]'s bytes to `out`; returns how many. prost encodes a message's fields in
/// tag order, so the model is its fields tagged below `graph` (7), the graph field (key,
/// length, then the graph's own fields in tag order, one repeated message at a time), and the
/// fields tagged above it (`opset_import` is 8).
pub fn write_to(model: &ModelProto, out: &mut impl std::io::Write) -> std::io::Result<u64> {
    use prost::encoding::{WireType, encode_key, encode_varint, message, string};
    let Some(graph) = &model.graph else {
        let bytes = model.encode_to_vec();
        out.write_all(&bytes)?;
        return Ok(bytes.len() as u64);
    };
    let head = ModelProto {
        ir_version: model.ir_version,
        opset_import: Vec::new(),
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        graph: None,
        metadata_props: Vec::new(),
    };
    let mut buf = head.encode_to_vec();
    encode_key(7, WireType::LengthDelimited, &mut buf);
    encode_varint(graph.encoded_len() as u64, &mut buf);
    let mut total = 0u64;
    let mut flush = |buf: &mut Vec<u8>, out: &mut dyn std::io::Write| -> std::io::Result<()> {
        out.write_all(buf)?;
        total += buf.len() as u64;
        buf.clear();
        Ok(())
    };
    for n in &graph.node {
        message::encode(1, n, &mut buf);
    }
    if !graph.name.is_empty() {
        string::encode(2, &graph.name, &mut buf);
    }
    flush(&mut buf, out)?;
    for t in &graph.initializer {
        message::encode(5, t, &mut buf);
        flush(&mut buf, out)?;
    }
    if !graph.doc_string.is_empty() {
        string::encode(10, &graph.doc_string, &mut buf);
    }
    for (tag, values) in [
        (11, &graph.input),
        (12, &graph.output),
        (13, &graph.value_info),
    ] {
        for v in values {
            message::encode(tag, v, &mut buf);
        }
    }
    let tail = ModelProto {
        opset_import: model.opset_import.clone(),
        metadata_props: model.metadata_props.clone(),
        ..ModelProto::default()
    };
    tail.encode(&mut buf).map_err(std::io::Error::other)?;
    flush(&mut buf, out)?;
    Ok(total)
}
