//! Reading a PyTorch checkpoint (`.pth`) without running it.
//!
//! `torch.load` unpickles, and unpickling runs whatever the file names (`os.system` included).
//! burn's `pytorch-reader` parses the pickle opcodes in Rust instead: it only ever builds
//! dicts, lists, strings, numbers and lazy tensor handles, and keeps any other Python object
//! opaque. Nothing in the file can execute.
//!
//! What this module adds on top: finding the state dict inside the checkpoint layouts people
//! have (`{"state_dict": …}` from mmdetection / mmengine, a bare state dict, a `model` key),
//! stripping wrapper prefixes (`module.` from DistributedDataParallel), recognising EMA shadow
//! copies, reading the class names from the checkpoint's `meta`, and turning a stored tensor of
//! any float type into f32 data.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A tensor of the file, read only when asked ([`read_f32`]).
pub use burn::store::pytorch_reader::Tensor as PtTensor;
use burn::store::pytorch_reader::{DType as PtDType, PickleValue, PytorchReader};
use burn::tensor::{DType, TensorData};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A PyTorch checkpoint's model tensors, under their state-dict names, not yet read.
pub struct StateDict {
    pub path: PathBuf,
    /// State-dict name (prefixes stripped) → lazy tensor.
    pub tensors: BTreeMap<String, PtTensor>,
    /// What was stripped or set aside to get there, for the report.
    pub layout: Layout,
    /// Class names from `meta` (`dataset_meta.classes` in mmengine checkpoints, `CLASSES` in
    /// mmdetection 2.x ones); empty when the checkpoint has none.
    pub class_names: Vec<String>,
    /// SHA-256 of the whole file: the checkpoint's identity in the export metadata.
    pub sha256: String,
}

/// How the state dict was found in the file.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Layout {
    /// The top-level key holding the state dict (`state_dict`, `model`), if any.
    pub container: Option<String>,
    /// A prefix removed from every key (`module.`).
    pub stripped_prefix: Option<String>,
    /// Tensors outside the state dict (optimizer moments, …): not model weights.
    pub outside: usize,
    /// EMA shadow tensors (mmdetection's `ema_*` buffers) left aside: the live weights are used.
    pub ema_shadows: usize,
}

/// True when `path` starts like a PyTorch file: a ZIP archive (`torch.save` since 1.6) or a
/// protocol-2+ pickle (the legacy format). Our own checkpoints start with `CODETRCK`.
pub fn looks_like_pytorch(path: &Path) -> bool {
    let mut head = [0u8; 4];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    head == *b"PK\x03\x04" || (head[0] == 0x80 && (2..=5).contains(&head[1]))
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Streams the file through SHA-256.
fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::model::checkpoint::hex(&h.finalize()))
}

impl StateDict {
    /// Opens `path` and finds its model state dict. Tensor bytes are not read here.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(bad(path, "no such file"));
        }
        let reader = PytorchReader::new(path)
            .map_err(|e| bad(path, format!("not a readable PyTorch checkpoint: {e}")))?;
        let all = reader.into_tensors();
        if all.is_empty() {
            return Err(bad(path, "the file holds no tensors"));
        }
        let mut layout = Layout::default();
        // The state dict's container: mmengine / mmdetection write {meta, state_dict,
        // optimizer, …}; other trainers use `model`. A bare state dict has neither.
        let container = ["state_dict", "model"]
            .into_iter()
            .find(|c| all.keys().any(|k| k.starts_with(&format!("{c}."))));
        let mut tensors: BTreeMap<String, PtTensor> = BTreeMap::new();
        for (k, t) in all {
            match container {
                Some(c) => match k.strip_prefix(&format!("{c}.")) {
                    Some(rest) => {
                        tensors.insert(rest.to_string(), t);
                    }
                    None => layout.outside += 1,
                },
                None => {
                    tensors.insert(k, t);
                }
            }
        }
        layout.container = container.map(str::to_string);
        // DistributedDataParallel's wrapper, when every key carries it.
        for prefix in ["module."] {
            if tensors.keys().all(|k| k.starts_with(prefix)) {
                tensors = tensors
                    .into_iter()
                    .map(|(k, t)| (k[prefix.len()..].to_string(), t))
                    .collect();
                layout.stripped_prefix = Some(prefix.to_string());
            }
        }
        // mmdetection 2.x's ExpMomentumEMAHook keeps `ema_<dotted_name_with_underscores>`
        // buffers beside the weights: shadows of the live tensors, not model parameters.
        let before = tensors.len();
        tensors.retain(|k, _| !k.starts_with("ema_"));
        layout.ema_shadows = before - tensors.len();
        let class_names = read_class_names(path);
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            layout,
            class_names,
            sha256: file_sha256(path)?,
        })
    }
}

/// Class names from the checkpoint's `meta`, if it has them (never an error: many files
/// have no `meta`).
fn read_class_names(path: &Path) -> Vec<String> {
    let Ok(PickleValue::Dict(meta)) = PytorchReader::read_pickle_data(path, Some("meta")) else {
        return Vec::new();
    };
    let names = match meta.get("dataset_meta") {
        Some(PickleValue::Dict(d)) => d.get("classes"),
        _ => None,
    }
    .or_else(|| meta.get("CLASSES"));
    match names {
        Some(PickleValue::List(items)) => {
            let v: Vec<String> = items
                .iter()
                .filter_map(|i| match i {
                    PickleValue::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            if v.len() == items.len() {
                v
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    }
}

/// Reads a stored int64 tensor (e.g. an index buffer), flat.
pub fn read_i64(t: &PtTensor) -> std::result::Result<Vec<i64>, String> {
    if t.dtype() != PtDType::I64 {
        return Err(format!("`{}` is {:?}, expected int64", t.name, t.dtype()));
    }
    let bytes = t.read().map_err(|e| e.to_string())?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// Reads a stored tensor as f32 data of its own shape (f64 / f16 / bf16 are converted; an
/// integer tensor where weights are expected is an error).
pub fn read_f32(t: &PtTensor) -> std::result::Result<TensorData, String> {
    let bytes = t.read().map_err(|e| e.to_string())?;
    let shape = t.shape().to_vec();
    let dtype = match t.dtype() {
        PtDType::F32 => DType::F32,
        PtDType::F64 => DType::F64,
        PtDType::F16 => DType::F16,
        PtDType::BF16 => DType::BF16,
        other => {
            return Err(format!(
                "`{}` is {other:?}, expected a float tensor",
                t.name
            ));
        }
    };
    let data = TensorData::from_bytes_vec(bytes, shape, dtype);
    Ok(if dtype == DType::F32 {
        data
    } else {
        data.convert::<f32>()
    })
}
