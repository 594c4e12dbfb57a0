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
    /// The archive was read through a copy without its redundant ZIP64 end records, which the
    /// ZIP reader misreads in this file ([`zip64_tail_misread`]).
    pub zip64_records_set_aside: bool,
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

/// Where `torch.save`'s archive misleads the ZIP reader under burn's PyTorch reader (zip
/// 9.8.1). `torch.save` writes ZIP64 end records (76 bytes) between the central directory and
/// the end record, even for small files. That reader looks for the directory where it would
/// start if it ended at the end record; when the first directory entry is itself 76 bytes long
/// (an archive root name of 21 characters: 46 + 21 + `/data.pkl`), a directory entry sits
/// there, the reader starts one entry late and fails ("Invalid Central Directory header").
/// Returns `(directory end, end record offset)` when `path` is such a file and the ZIP64
/// records are redundant (no field of the end record is saturated), else `None`.
pub fn zip64_tail_misread(path: &Path) -> std::io::Result<Option<(u64, u64)>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let tail_len = len.min(65_535 + 22);
    f.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail)?;
    let Some(at) = tail.windows(4).rposition(|w| w == b"PK\x05\x06") else {
        return Ok(None);
    };
    let Some(eocd) = tail.get(at..at + 22) else {
        return Ok(None);
    };
    let u16_at = |i: usize| u16::from_le_bytes([eocd[i], eocd[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([eocd[i], eocd[i + 1], eocd[i + 2], eocd[i + 3]]);
    let (entries, cd_size, cd_offset) = (u16_at(10), u32_at(12), u32_at(16));
    if entries == u16::MAX || cd_size == u32::MAX || cd_offset == u32::MAX {
        return Ok(None); // the ZIP64 records carry real values: the reader uses them
    }
    let eocd_offset = len - tail_len + at as u64;
    let cd_end = u64::from(cd_offset) + u64::from(cd_size);
    if cd_end >= eocd_offset {
        return Ok(None);
    }
    let mut magic = [0u8; 4];
    f.seek(SeekFrom::Start(cd_end))?;
    f.read_exact(&mut magic)?;
    if magic != *b"PK\x06\x06" {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(eocd_offset - u64::from(cd_size)))?;
    f.read_exact(&mut magic)?;
    Ok((magic == *b"PK\x01\x02").then_some((cd_end, eocd_offset)))
}

/// A copy of `path` without the bytes between `cd_end` and `eocd_offset` (the ZIP64 records),
/// in the temp dir; the caller removes it once the reader holds it open.
fn copy_without_zip64_records(path: &Path, cd_end: u64, eocd_offset: u64) -> Result<PathBuf> {
    use std::io::{Seek, SeekFrom, Write};
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tmp = std::env::temp_dir().join(format!("codetr-{}-{stamp}.pth", std::process::id()));
    let copy = || -> std::io::Result<()> {
        let mut src = std::fs::File::open(path)?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        std::io::copy(&mut (&mut src).take(cd_end), &mut dst)?;
        src.seek(SeekFrom::Start(eocd_offset))?;
        std::io::copy(&mut src, &mut dst)?;
        dst.flush()
    };
    copy().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        bad(
            path,
            format!(
                "this archive needs a repaired copy to be read (its ZIP64 end records mislead \
                 the ZIP reader) and it could not be written to {}: {e}",
                tmp.display()
            ),
        )
    })?;
    Ok(tmp)
}

impl StateDict {
    /// Opens `path` and finds its model state dict. Tensor bytes are not read here.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(bad(path, "no such file"));
        }
        let mut layout = Layout::default();
        let (reader, class_names) = match zip64_tail_misread(path) {
            Ok(Some((cd_end, eocd_offset))) => {
                // Read through a copy without the redundant records. The reader keeps its file
                // handles, so the copy's name is removed as soon as it is open.
                let copy = copy_without_zip64_records(path, cd_end, eocd_offset)?;
                let opened = PytorchReader::new(&copy);
                let names = read_class_names(&copy);
                let _ = std::fs::remove_file(&copy);
                layout.zip64_records_set_aside = true;
                (opened, names)
            }
            _ => (PytorchReader::new(path), read_class_names(path)),
        };
        let reader =
            reader.map_err(|e| bad(path, format!("not a readable PyTorch checkpoint: {e}")))?;
        let all = reader.into_tensors();
        if all.is_empty() {
            return Err(bad(path, "the file holds no tensors"));
        }
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
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            layout,
            class_names,
            sha256: crate::model::checkpoint::file_len_sha256(path)?.1,
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
