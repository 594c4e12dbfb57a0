//! The core crate's one error type. Errors of the data layer (COCO files, images, the loader,
//! detections) are `codetr_data::Error`, carried here unchanged.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Display omits the source: callers print the chain (`{:#}`), which adds it once.
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Bad value given on the command line or in a config file.
    #[error("invalid {what}: {message}")]
    InvalidArgument { what: &'static str, message: String },
    /// A checkpoint that is missing parts, corrupted, or made for something else.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// An official checkpoint whose tensors do not all find a place (unknown, missing or
    /// mis-shaped), each problem on its own line.
    #[error("cannot import {}:\n  {problems}", path.display())]
    Import { path: PathBuf, problems: String },
    /// The device failed while computing what was read back: out of memory or a kernel error
    /// on a GPU backend (a queued computation fails at the read that waits for it).
    #[error(
        "the {device} device failed computing {what} (out of memory or a kernel error; a \
         smaller --batch-size with --accumulate keeps the effective batch): {message}"
    )]
    Device {
        device: String,
        what: &'static str,
        message: String,
    },
    /// From the data layer (reading, generating, loading or evaluating data).
    #[error(transparent)]
    Data(#[from] codetr_data::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
