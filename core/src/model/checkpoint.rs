//! Checkpoint files: a self-describing header (format version, model config, class names,
//! per-section length and SHA-256) followed by sections of Burn record bytes (`model`, and
//! later `optimizer`/`trainer`). Written atomically; every way a file can be wrong — truncated,
//! corrupted, another format, NaN weights — is a clear error, never a panic.
//!
//! Layout: `b"CODETRCK"` | u32 LE header length | header JSON | section bytes in header order.

use std::io::{Read, Write};
use std::path::Path;

use burn::module::Module;
use burn::store::burn_pack::Writer;
use burn::store::{ModuleRecord, ModuleSnapshot};
use burn::tensor::{Bytes, Device};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::DetectorConfig;
use super::detector::Detector;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"CODETRCK";
pub const FORMAT_VERSION: u32 = 1;
/// Headers are small; anything larger is not one of our files.
const MAX_HEADER: usize = 16 << 20;

/// Named blobs of a checkpoint, in file order.
pub type Sections = Vec<(String, Vec<u8>)>;

/// One stored blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub len: u64,
    pub sha256: String,
}

/// The checkpoint's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    pub format_version: u32,
    pub config: DetectorConfig,
    pub class_names: Vec<String>,
    /// Training step the weights come from (0 for a fresh init).
    pub step: u64,
    /// Free-form facts (e.g. the validation mAP), carried into the export metadata.
    #[serde(default)]
    pub meta: serde_json::Value,
    pub sections: Vec<Section>,
    /// SHA-256 of the detector's weights alone (see [`weights_sha256`]): the same weights give
    /// the same value whichever process saved them. Empty in checkpoints written before it
    /// existed.
    #[serde(default)]
    pub weights_sha256: String,
}

impl CheckpointHeader {
    /// The checkpoint's identity in export metadata and logs: the weights' digest, or for
    /// older checkpoints the `model` section's.
    pub fn identity(&self) -> Option<&str> {
        if self.weights_sha256.is_empty() {
            self.model_sha256()
        } else {
            Some(&self.weights_sha256)
        }
    }

    /// SHA-256 of the `model` section's bytes (its integrity check). Not an identity of the
    /// weights: Burn's record carries each parameter's random id, so the same weights saved
    /// from two processes differ here.
    pub fn model_sha256(&self) -> Option<&str> {
        self.sections
            .iter()
            .find(|s| s.name == "model")
            .map(|s| s.sha256.as_str())
    }
}

/// SHA-256 over the detector's tensors in name order: each one's path, dtype, shape and
/// little-endian bytes. Parameter ids (random per process) are left out on purpose.
pub fn weights_sha256(model: &Detector) -> Result<String> {
    let mut tensors = model.collect(None, None, false);
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for t in tensors {
        h.update(t.name.as_bytes());
        h.update([0u8]);
        h.update(format!("{:?}", t.dtype).as_bytes());
        for d in t.shape.iter() {
            h.update((*d as u64).to_le_bytes());
        }
        let name = t.name.clone();
        let bytes = t.to_bytes().map_err(|e| Error::InvalidArgument {
            what: "model",
            message: format!("cannot read `{name}`: {e}"),
        })?;
        h.update(&bytes[..]);
    }
    Ok(hex(&h.finalize()))
}

/// Lowercase hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn corrupt(path: &Path, m: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: m.into(),
    }
}

/// Writes `model` (+ extra sections) atomically to `path`.
pub fn save(
    path: &Path,
    model: &Detector,
    class_names: &[String],
    step: u64,
    meta: serde_json::Value,
    extra_sections: Sections,
) -> Result<CheckpointHeader> {
    if class_names.len() != model.config().num_classes {
        return Err(corrupt(
            path,
            format!(
                "{} class names for a {}-class model",
                class_names.len(),
                model.config().num_classes
            ),
        ));
    }
    let weights_sha256 = weights_sha256(model)?;
    // The model section (a burnpack record, as `into_record().into_bytes()` makes it) is
    // streamed one tensor at a time into a scratch file beside `path`, hashed from there and
    // copied into the checkpoint: the model is never in memory twice (a record plus its bytes
    // would be two more copies: the peak of converting a 946 MB official checkpoint).
    let scratch = scratch_path(path)?;
    let result = (|| {
        Writer::new(model.collect(None, None, false))
            .auto_extension(false)
            .write_to_file_in_place(&scratch)
            .map_err(|e| corrupt(path, format!("cannot serialise the model: {e}")))?;
        let (model_len, model_sha) = file_len_sha256(&scratch)?;
        let mut sections = vec![Section {
            name: "model".into(),
            len: model_len,
            sha256: model_sha,
        }];
        sections.extend(extra_sections.iter().map(|(name, b)| Section {
            name: name.clone(),
            len: b.len() as u64,
            sha256: hex(&Sha256::digest(b)),
        }));
        let header = CheckpointHeader {
            format_version: FORMAT_VERSION,
            config: model.config().clone(),
            class_names: class_names.to_vec(),
            step,
            meta,
            sections,
            weights_sha256,
        };
        let json = serde_json::to_vec(&header).map_err(|e| corrupt(path, e.to_string()))?;
        let json_len = (json.len() as u32).to_le_bytes();
        codetr_data::fsutil::write_atomic_with(path, |f| {
            f.write_all(MAGIC)?;
            f.write_all(&json_len)?;
            f.write_all(&json)?;
            let copied = std::io::copy(&mut std::fs::File::open(&scratch)?, f)?;
            if copied != model_len {
                return Err(std::io::Error::other(format!(
                    "the model section changed while it was copied ({copied} of {model_len} bytes)"
                )));
            }
            for (_, b) in &extra_sections {
                f.write_all(b)?;
            }
            Ok(())
        })?;
        Ok(header)
    })();
    let _ = std::fs::remove_file(&scratch);
    result
}

/// A scratch file name beside `path` (same file system, cleaned up by the caller).
fn scratch_path(path: &Path) -> Result<std::path::PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| corrupt(path, "the path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok(dir.join(format!(".{name}.model.tmp{}", std::process::id())))
}

/// Length and SHA-256 of a file, streamed.
pub(crate) fn file_len_sha256(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    Ok((len, hex(&h.finalize())))
}

/// Reads and verifies a checkpoint: header, section lengths and hashes.
pub fn read(path: &Path) -> Result<(CheckpointHeader, Sections)> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if data.len() < 12 || &data[..8] != MAGIC {
        return Err(corrupt(path, "not a codetr checkpoint (bad magic)"));
    }
    let hlen = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
    if hlen > MAX_HEADER || 12 + hlen > data.len() {
        return Err(corrupt(path, "truncated header"));
    }
    let header: CheckpointHeader = serde_json::from_slice(&data[12..12 + hlen])
        .map_err(|e| corrupt(path, format!("bad header: {e}")))?;
    if header.format_version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                header.format_version
            ),
        ));
    }
    header.config.validate()?;
    let mut at = 12 + hlen;
    let mut sections = Vec::with_capacity(header.sections.len());
    for s in &header.sections {
        let end = at
            .checked_add(s.len as usize)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!("truncated: section `{}` needs {} bytes", s.name, s.len),
                )
            })?;
        let blob = &data[at..end];
        if hex(&Sha256::digest(blob)) != s.sha256 {
            return Err(corrupt(
                path,
                format!("section `{}` fails its SHA-256 check (corrupted)", s.name),
            ));
        }
        sections.push((s.name.clone(), blob.to_vec()));
        at = end;
    }
    if at != data.len() {
        return Err(corrupt(
            path,
            format!("{} unexpected trailing bytes", data.len() - at),
        ));
    }
    Ok((header, sections))
}

/// Number of parameter values (elements) in a record section (`model`, `ema`, `train_heads`),
/// read from its tensor table without building the module it belongs to: the exporter counts
/// the training-only parameters it leaves out without depending on the training code.
pub fn record_elements(path: &Path, section: &str, bytes: &[u8]) -> Result<usize> {
    let bad = |e: burn_pack::Error| corrupt(path, format!("section `{section}`: {e}"));
    let tensors = burn_pack::Reader::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .and_then(burn_pack::Reader::into_tensors)
        .map_err(bad)?;
    Ok(tensors.iter().map(|t| t.shape.num_elements()).sum())
}

/// Loads a checkpoint into a model built from its own config.
pub fn load(path: &Path, device: &Device) -> Result<(Detector, CheckpointHeader)> {
    let (header, sections) = read(path)?;
    let Some((_, bytes)) = sections.into_iter().find(|(n, _)| n == "model") else {
        return Err(corrupt(path, "no `model` section"));
    };
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| corrupt(path, format!("model section: {e}")))?;
    let model = header
        .config
        .init(device)?
        .try_load_record(record)
        .map_err(|e| corrupt(path, format!("weights do not fit the config: {e}")))?;
    if let Some(p) = super::params::first_non_finite(&model) {
        return Err(corrupt(
            path,
            format!("parameter `{p}` contains NaN or infinity"),
        ));
    }
    Ok((model, header))
}

/// Loads a checkpoint and checks it was made for `expected` (the config the caller intends).
pub fn load_expecting(path: &Path, expected: &DetectorConfig, device: &Device) -> Result<Detector> {
    let (model, header) = load(path, device)?;
    if &header.config != expected {
        return Err(corrupt(
            path,
            format!(
                "made for preset `{}` with a different config than the one given (compare `codetr-train info --checkpoint`)",
                header.config.preset
            ),
        ));
    }
    Ok(model)
}
