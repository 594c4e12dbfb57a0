//! `codetr-loadtest`: a load generator for `POST /v1/detect` (and any server with the same
//! API, such as the FastAPI peer in `loadtest/peers/`).
//!
//! [`client`] sends requests over pooled keep-alive HTTP/1.1 connections; [`run`] drives one
//! level (closed loop: fixed concurrency; open loop: fixed arrival rate, latencies measured
//! from each request's *intended* start so a stalled server cannot hide its queueing —
//! coordinated omission); [`scrape`] reads the server's own `/metrics` split (queue vs
//! inference, mean batch size); [`report`] prints the table and writes JSON and the PNG.

pub mod client;
pub mod report;
pub mod run;
pub mod scrape;

/// The crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad flag value or combination.
    #[error("{0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The target could not be reached at all.
    #[error("{0}")]
    Http(String),
    /// Drawing the plot failed.
    #[error("plot: {0}")]
    Plot(String),
}

/// Result with [`LoadError`].
pub type Result<T, E = LoadError> = std::result::Result<T, E>;

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename), so a
/// crash never leaves a half-written report.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| LoadError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
