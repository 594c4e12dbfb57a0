//! The data crate's one error type: files, COCO content, images, the loader, detections.

use std::path::PathBuf;

/// Where in a COCO file a problem sits: the file plus whichever ids apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CocoLocation {
    pub file: PathBuf,
    pub image_id: Option<u64>,
    pub annotation_id: Option<u64>,
}

impl std::fmt::Display for CocoLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(id) = self.image_id {
            write!(f, ": image id {id}")?;
        }
        if let Some(id) = self.annotation_id {
            write!(f, ": annotation id {id}")?;
        }
        Ok(())
    }
}

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
    /// A COCO file is well-formed JSON but its content is wrong.
    #[error("{at}: field `{field}`: {message}")]
    Coco {
        at: CocoLocation,
        field: &'static str,
        message: String,
    },
    /// An image file that is missing, unreadable or does not match its record.
    #[error("{path} (image id {image_id}): {message}")]
    Image {
        path: PathBuf,
        image_id: u64,
        message: String,
    },
    /// Bad value given on the command line or in a config file.
    #[error("invalid {what}: {message}")]
    InvalidArgument { what: &'static str, message: String },
    #[error("data loader: {0}")]
    Loader(String),
    /// A detection in a COCO results file (or list) that cannot be evaluated. `origin` is the
    /// results file, or a description when the detections did not come from a file.
    #[error("{origin}: detection #{index}: {message}")]
    Detection {
        origin: String,
        index: usize,
        message: String,
    },
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
