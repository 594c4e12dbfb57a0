//! Server configuration: a TOML file (every key optional, `deny_unknown_fields`) overridden by
//! CLI flags, which clap also reads from `CODETR_SERVE_*` environment variables.
//!
//! Precedence, lowest first: built-in defaults → `--config FILE` → environment → flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServeError};

/// An execution provider ONNX Runtime can run the graph on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// NVIDIA TensorRT (needs the `gpu` cargo feature, onnxruntime-gpu and TensorRT 10 libs).
    Tensorrt,
    /// NVIDIA CUDA (needs the `gpu` cargo feature and onnxruntime-gpu).
    Cuda,
    /// ONNX Runtime's own CPU kernels (always available).
    Cpu,
}

impl Provider {
    /// The name used in logs, `/v1/models` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }

    /// Whether this provider runs on a GPU.
    pub fn is_gpu(self) -> bool {
        !matches!(self, Provider::Cpu)
    }
}

/// Everything the server can be configured with. Field docs double as the TOML reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// The exported ONNX graph (docs/DESIGN.md §7 contract).
    pub model: Option<PathBuf>,
    /// `[height, width]` images are resized to: `[800, 1333]`, or several,
    /// `[[800, 1333], [1333, 800]]`. Required for a graph exported with `--dynamic-size` (its
    /// metadata has no size); for a fixed-size graph it must be absent or equal to the graph's
    /// size. Several sizes need a dynamic-size letterbox graph: each image goes to the one it is
    /// shrunk least in (a landscape and a portrait canvas serve both orientations at the
    /// official scale), and a batch holds images of one size.
    #[serde(deserialize_with = "one_or_many_hw")]
    pub input_size: Vec<[u32; 2]>,
    /// Address to listen on.
    pub bind: SocketAddr,
    /// ONNX Runtime shared library (else `ORT_DYLIB_PATH`, else `.ort/cpu/libonnxruntime.so`).
    pub ort_lib: Option<PathBuf>,
    pub batching: BatchingConfig,
    pub runtime: RuntimeConfig,
    pub limits: LimitsConfig,
    pub detect: DetectConfig,
    pub http: HttpConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: None,
            input_size: Vec::new(),
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ort_lib: None,
            batching: BatchingConfig::default(),
            runtime: RuntimeConfig::default(),
            limits: LimitsConfig::default(),
            detect: DetectConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

/// The dynamic batcher (Triton's semantics).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Largest batch one inference runs on.
    pub max_batch_size: usize,
    /// The batch sizes the graph is actually run at: a batch of n images is padded to the
    /// smallest of these ≥ n, so warm-up and TensorRT profiles cover every shape. Empty means
    /// powers of two up to `max_batch_size` (plus `max_batch_size`).
    pub batch_sizes: Vec<usize>,
    /// How long the first image of a batch may wait for others (microseconds).
    pub max_queue_delay_us: u64,
    /// Images admitted but not yet running; beyond it requests get 503 + Retry-After.
    pub max_queue_size: usize,
    /// Default per-request deadline (ms); requests may ask for less with `timeout_ms`.
    pub timeout_ms: u64,
    /// Inference workers, each with its own ONNX Runtime session.
    pub workers: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 8,
            batch_sizes: Vec::new(),
            max_queue_delay_us: 2_000,
            max_queue_size: 64,
            timeout_ms: 30_000,
            workers: 1,
        }
    }
}

impl BatchingConfig {
    /// The sorted, deduplicated batch sizes the graph is run (and warmed) at.
    pub fn effective_sizes(&self) -> Vec<usize> {
        let mut v = if self.batch_sizes.is_empty() {
            let mut v: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
                .take_while(|&n| n < self.max_batch_size)
                .collect();
            v.push(self.max_batch_size);
            v
        } else {
            self.batch_sizes.clone()
        };
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// ONNX Runtime settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Providers to try, in order; the first that registers runs the graph.
    pub providers: Vec<Provider>,
    /// Fail at startup unless a GPU provider took.
    pub require_gpu: bool,
    /// Intra-op threads per session (0 = ONNX Runtime's default: one per core).
    pub intra_threads: usize,
    /// CUDA device index (CUDA and TensorRT).
    pub device_id: i32,
    /// TensorRT: build fp16 engines.
    pub trt_fp16: bool,
    /// TensorRT: engine + timing cache directory (persist it: engine builds take minutes).
    pub trt_cache_dir: PathBuf,
    /// CUDA: let MatMul and Conv use TensorFloat-32 (10-bit mantissa) on Ampere and later.
    /// Faster, but outputs drift from the CPU's by ~1e-2 in score after 12 transformer layers;
    /// off keeps CPU↔CUDA scores within 1e-3 (bench/results/gpu_serve.json).
    pub cuda_tf32: bool,
    /// CUDA: how cuDNN picks each Conv's algorithm. Searches run once per input shape at
    /// warm-up (every configured batch size), never on the hot path.
    pub cuda_conv_algo: ConvAlgo,
    /// CUDA: how the device memory arena grows. `same-as-requested` avoids rounding a large
    /// batch's request up to the next power of two (GBs at paper size).
    pub cuda_arena: ArenaGrowth,
    /// CUDA: prefer NHWC convolution kernels: `paper-r50` at batch 1 ran in 95 ms instead of
    /// 138 (fp32) and 71 instead of 115 (fp16) on an H200 (bench/results/gpu_profile.json).
    pub cuda_prefer_nhwc: bool,
    /// CUDA: cap on the device memory arena, in MiB (0 = no cap). A batch size whose warm-up
    /// runs out of it is dropped (see `batching`); for sharing a GPU between processes.
    pub cuda_memory_limit_mb: u64,
    /// Stage batches through ONNX Runtime I/O binding: input and output tensors allocated once
    /// per batch size (pinned host memory under CUDA and TensorRT), so a run allocates nothing
    /// and its copies to and from the GPU are DMA. Off: `Session::run` on a reused buffer.
    pub io_binding: bool,
    /// Write ONNX Runtime's per-node profile (Chrome trace JSON) with this path prefix, one
    /// file per session. For diagnosis only: every run is recorded in memory until exit.
    pub profile: Option<PathBuf>,
}

/// cuDNN's convolution algorithm choice (ONNX Runtime's `cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConvAlgo {
    /// Benchmark every algorithm for each shape (once, at warm-up); the fastest.
    Exhaustive,
    /// cuDNN's heuristics: no benchmarking, usually as fast.
    Heuristic,
    /// cuDNN's default algorithm.
    Default,
}

/// How ONNX Runtime's CUDA memory arena grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ArenaGrowth {
    /// ONNX Runtime's default: each extension doubles.
    NextPowerOfTwo,
    /// Extend by exactly what is asked.
    SameAsRequested,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            providers: vec![Provider::Cpu],
            require_gpu: false,
            intra_threads: 0,
            device_id: 0,
            trt_fp16: true,
            trt_cache_dir: PathBuf::from("trt-cache"),
            cuda_tf32: false,
            cuda_conv_algo: ConvAlgo::Exhaustive,
            cuda_arena: ArenaGrowth::SameAsRequested,
            cuda_prefer_nhwc: true,
            cuda_memory_limit_mb: 0,
            io_binding: true,
            profile: None,
        }
    }
}

/// Input limits, enforced before any large allocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body (bytes) → 413.
    pub max_body_bytes: usize,
    /// Largest image (width × height, from the header, before decoding) → 422.
    pub max_pixels: u64,
    /// Most images in one request → 400.
    pub max_images: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            max_pixels: 40_000_000,
            max_images: 16,
        }
    }
}

/// Defaults for `/v1/detect` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Detections scoring below this are dropped unless the request says otherwise.
    pub score_threshold: f32,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            score_threshold: codetr_model::filter::DEFAULT_SCORE_THRESHOLD,
        }
    }
}

/// HTTP behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// After SIGTERM/SIGINT: seconds to finish admitted requests before exiting anyway.
    pub drain_timeout_s: u64,
    /// Origins allowed by CORS (`*` for any); empty disables CORS headers.
    pub cors_origins: Vec<String>,
    /// File holding the bearer token for `/v1/*` (the env var `CODETR_SERVE_AUTH_TOKEN` wins).
    pub auth_token_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            drain_timeout_s: 30,
            cors_origins: Vec::new(),
            auth_token_file: None,
        }
    }
}

/// `codetr-serve`: serves a codetr ONNX graph over HTTP (POST /v1/detect).
///
/// Every flag can also be given as an environment variable (shown in brackets) or in the TOML
/// file passed with --config (same names, grouped in sections; see README "Serving").
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// The exported ONNX graph (from `codetr-export`), or a model directory holding model.onnx.
    #[arg(long, env = "CODETR_SERVE_MODEL")]
    pub model: Option<PathBuf>,
    /// Input size HxW images are resized to: required for a graph exported with
    /// --dynamic-size; for a fixed-size graph it must match the graph [default: the graph's].
    /// Several, comma-separated (e.g. 800x1333,1333x800), for a dynamic-size letterbox graph:
    /// each image goes to the size it is shrunk least in; a batch holds one size.
    #[arg(long, env = "CODETR_SERVE_INPUT_SIZE", value_parser = codetr_model::preprocess::parse_hw, value_delimiter = ',')]
    pub input_size: Option<Vec<[u32; 2]>>,
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "CODETR_SERVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "CODETR_SERVE_BIND")]
    pub bind: Option<SocketAddr>,
    /// ONNX Runtime library (libonnxruntime.so) [default: $ORT_DYLIB_PATH, then .ort/cpu/].
    #[arg(long, env = "CODETR_SERVE_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// Execution providers to try in order, comma-separated [default: cpu].
    #[arg(long, env = "CODETR_SERVE_PROVIDERS", value_delimiter = ',')]
    pub providers: Option<Vec<Provider>>,
    /// Exit at startup unless a GPU provider (tensorrt or cuda) took.
    #[arg(long, env = "CODETR_SERVE_REQUIRE_GPU")]
    pub require_gpu: bool,
    /// Intra-op threads per session; 0 = one per core [default: 0].
    #[arg(long, env = "CODETR_SERVE_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// CUDA device index for the cuda and tensorrt providers [default: 0].
    #[arg(long, env = "CODETR_SERVE_DEVICE_ID")]
    pub device_id: Option<i32>,
    /// TensorRT engine and timing cache directory [default: trt-cache].
    #[arg(long, env = "CODETR_SERVE_TRT_CACHE_DIR")]
    pub trt_cache_dir: Option<PathBuf>,
    /// CUDA: allow TensorFloat-32 in MatMul/Conv (faster; scores drift ~1e-2 from the CPU's)
    /// [default: false].
    #[arg(long, env = "CODETR_SERVE_CUDA_TF32")]
    pub cuda_tf32: Option<bool>,
    /// CUDA: cuDNN convolution algorithm search, run once per batch size at warm-up
    /// [default: exhaustive].
    #[arg(long, env = "CODETR_SERVE_CUDA_CONV_ALGO")]
    pub cuda_conv_algo: Option<ConvAlgo>,
    /// CUDA: memory arena growth [default: same-as-requested].
    #[arg(long, env = "CODETR_SERVE_CUDA_ARENA")]
    pub cuda_arena: Option<ArenaGrowth>,
    /// CUDA: prefer NHWC convolution kernels (faster on tensor cores) [default: true].
    #[arg(long, env = "CODETR_SERVE_CUDA_PREFER_NHWC")]
    pub cuda_prefer_nhwc: Option<bool>,
    /// CUDA: cap on the device memory arena in MiB, 0 = none; a batch size that runs out of it
    /// at warm-up is dropped [default: 0].
    #[arg(long, env = "CODETR_SERVE_CUDA_MEMORY_LIMIT_MB")]
    pub cuda_memory_limit_mb: Option<u64>,
    /// Stage batches through ONNX Runtime I/O binding (buffers allocated once per batch size,
    /// pinned under CUDA/TensorRT); false runs `Session::run` on a reused buffer
    /// [default: true].
    #[arg(long, env = "CODETR_SERVE_IO_BINDING")]
    pub io_binding: Option<bool>,
    /// Write ONNX Runtime's per-node profile (Chrome trace JSON) with this path prefix; for
    /// diagnosis only (every run is kept in memory until exit) [default: off].
    #[arg(long, env = "CODETR_SERVE_PROFILE")]
    pub profile: Option<PathBuf>,
    /// Inference workers, each with its own ONNX Runtime session [default: 1].
    #[arg(long, env = "CODETR_SERVE_WORKERS")]
    pub workers: Option<usize>,
    /// Largest batch one inference runs on [default: 8].
    #[arg(long, env = "CODETR_SERVE_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Batch sizes the graph runs at, comma-separated; batches are padded up to one of them
    /// [default: powers of two up to --max-batch-size].
    #[arg(long, env = "CODETR_SERVE_BATCH_SIZES", value_delimiter = ',')]
    pub batch_sizes: Option<Vec<usize>>,
    /// Longest wait (µs) of a batch's first image for more images [default: 2000].
    #[arg(long, env = "CODETR_SERVE_MAX_QUEUE_DELAY_US")]
    pub max_queue_delay_us: Option<u64>,
    /// Images admitted but not yet running; beyond it: 503 + Retry-After [default: 64].
    #[arg(long, env = "CODETR_SERVE_MAX_QUEUE_SIZE")]
    pub max_queue_size: Option<usize>,
    /// Default request deadline in ms; past it the request gets 504 [default: 30000].
    #[arg(long, env = "CODETR_SERVE_TIMEOUT_MS")]
    pub timeout_ms: Option<u64>,
    /// Default score threshold for detections (0–1) [default: 0.3].
    #[arg(long, env = "CODETR_SERVE_SCORE_THRESHOLD")]
    pub score_threshold: Option<f32>,
    /// Largest request body in bytes; larger: 413 [default: 33554432].
    #[arg(long, env = "CODETR_SERVE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest image in pixels (width × height, read from the header); larger: 422
    /// [default: 40000000].
    #[arg(long, env = "CODETR_SERVE_MAX_PIXELS")]
    pub max_pixels: Option<u64>,
    /// Most images per request [default: 16].
    #[arg(long, env = "CODETR_SERVE_MAX_IMAGES")]
    pub max_images: Option<usize>,
    /// Seconds to finish admitted requests after SIGTERM/SIGINT [default: 30].
    #[arg(long, env = "CODETR_SERVE_DRAIN_TIMEOUT_S")]
    pub drain_timeout_s: Option<u64>,
    /// CORS allowed origins, comma-separated (`*` = any) [default: none, no CORS headers].
    #[arg(long, env = "CODETR_SERVE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// File with the bearer token required on /v1/* (CODETR_SERVE_AUTH_TOKEN takes precedence;
    /// probes, /metrics and / stay open).
    #[arg(long, env = "CODETR_SERVE_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "CODETR_SERVE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// The effective configuration: defaults, then the TOML file, then flags/env.
    pub fn resolve(&self) -> Result<ServeConfig> {
        let mut c = match &self.config {
            Some(p) => load_toml(p)?,
            None => ServeConfig::default(),
        };
        macro_rules! set {
            ($src:ident => $($dst:tt)+) => {
                if let Some(v) = &self.$src {
                    $($dst)+ = v.clone().into();
                }
            };
        }
        set!(model => c.model);
        set!(input_size => c.input_size);
        set!(bind => c.bind);
        set!(ort_lib => c.ort_lib);
        set!(providers => c.runtime.providers);
        set!(intra_threads => c.runtime.intra_threads);
        set!(device_id => c.runtime.device_id);
        set!(trt_cache_dir => c.runtime.trt_cache_dir);
        set!(cuda_tf32 => c.runtime.cuda_tf32);
        set!(cuda_conv_algo => c.runtime.cuda_conv_algo);
        set!(cuda_arena => c.runtime.cuda_arena);
        set!(cuda_prefer_nhwc => c.runtime.cuda_prefer_nhwc);
        set!(cuda_memory_limit_mb => c.runtime.cuda_memory_limit_mb);
        set!(io_binding => c.runtime.io_binding);
        if let Some(p) = &self.profile {
            c.runtime.profile = Some(p.clone());
        }
        set!(workers => c.batching.workers);
        set!(max_batch_size => c.batching.max_batch_size);
        set!(batch_sizes => c.batching.batch_sizes);
        set!(max_queue_delay_us => c.batching.max_queue_delay_us);
        set!(max_queue_size => c.batching.max_queue_size);
        set!(timeout_ms => c.batching.timeout_ms);
        set!(score_threshold => c.detect.score_threshold);
        set!(max_body_bytes => c.limits.max_body_bytes);
        set!(max_pixels => c.limits.max_pixels);
        set!(max_images => c.limits.max_images);
        set!(drain_timeout_s => c.http.drain_timeout_s);
        set!(cors_origins => c.http.cors_origins);
        set!(auth_token_file => c.http.auth_token_file);
        if self.require_gpu {
            c.runtime.require_gpu = true;
        }
        c.validate()?;
        Ok(c)
    }
}

/// `input_size` in TOML: one `[h, w]` or a list of them.
fn one_or_many_hw<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<[u32; 2]>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One([u32; 2]),
        Many(Vec<[u32; 2]>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(hw)) => Ok(vec![hw]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "input_size is [height, width] or a list of them, e.g. [[800, 1333], [1333, 800]]",
        )),
    }
}

fn load_toml(path: &Path) -> Result<ServeConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServeError::Config(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))
}

impl ServeConfig {
    /// Rejects values the server cannot run with, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ServeError::Config(m));
        let b = &self.batching;
        if b.max_batch_size == 0 || b.max_batch_size > 256 {
            return bad(format!(
                "batching.max_batch_size must be 1–256, got {}",
                b.max_batch_size
            ));
        }
        let sizes = b.effective_sizes();
        if sizes.first() == Some(&0) {
            return bad("batching.batch_sizes must be ≥ 1".into());
        }
        if sizes.last() != Some(&b.max_batch_size) {
            return bad(format!(
                "batching.batch_sizes {sizes:?} must end at max_batch_size {}",
                b.max_batch_size
            ));
        }
        if b.workers == 0 || b.workers > 64 {
            return bad(format!("batching.workers must be 1–64, got {}", b.workers));
        }
        if b.max_queue_size < self.limits.max_images {
            // Otherwise a request with max_images images could never be admitted.
            return bad(format!(
                "batching.max_queue_size ({}) must be ≥ limits.max_images ({})",
                b.max_queue_size, self.limits.max_images
            ));
        }
        if b.timeout_ms == 0 {
            return bad("batching.timeout_ms must be ≥ 1".into());
        }
        for (i, &[h, w]) in self.input_size.iter().enumerate() {
            let range = codetr_model::MIN_INPUT_SIDE..=codetr_model::MAX_INPUT_SIDE;
            if !range.contains(&h) || !range.contains(&w) {
                return bad(format!(
                    "input_size {h}x{w}: each side must be in {}..={}",
                    range.start(),
                    range.end()
                ));
            }
            if self.input_size[..i].contains(&[h, w]) {
                return bad(format!("input_size {h}x{w} is given twice"));
            }
        }
        if self.runtime.providers.is_empty() {
            return bad("runtime.providers must name at least one provider".into());
        }
        if !(0.0..=1.0).contains(&self.detect.score_threshold) {
            return bad(format!(
                "detect.score_threshold must be in [0, 1], got {}",
                self.detect.score_threshold
            ));
        }
        let l = &self.limits;
        if l.max_body_bytes < 1024 || l.max_pixels == 0 || l.max_images == 0 {
            return bad("limits: max_body_bytes ≥ 1024, max_pixels ≥ 1, max_images ≥ 1".into());
        }
        Ok(())
    }

    /// The configuration as TOML (what `--print-config` shows).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_batch_sizes_are_powers_of_two_then_max() {
        let b = BatchingConfig {
            max_batch_size: 6,
            ..Default::default()
        };
        assert_eq!(b.effective_sizes(), vec![1, 2, 4, 6]);
        let b = BatchingConfig {
            max_batch_size: 1,
            ..Default::default()
        };
        assert_eq!(b.effective_sizes(), vec![1]);
    }

    #[test]
    fn toml_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serve.toml");
        std::fs::write(
            &p,
            "model = \"m.onnx\"\n[batching]\nmax_batch_size = 4\nworkers = 2\n[detect]\nscore_threshold = 0.5\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "codetr-serve",
            "--config",
            p.to_str().unwrap(),
            "--workers",
            "3",
        ]);
        let c = cli.resolve().unwrap();
        assert_eq!(c.model.as_deref(), Some(Path::new("m.onnx")));
        assert_eq!(c.batching.max_batch_size, 4);
        assert_eq!(c.batching.workers, 3);
        assert_eq!(c.detect.score_threshold, 0.5);
        // The printed config parses back to the same thing.
        let again: ServeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again.batching.workers, 3);
    }

    #[test]
    fn cuda_settings_from_toml_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serve.toml");
        std::fs::write(
            &p,
            "[runtime]\ncuda_tf32 = true\ncuda_conv_algo = \"heuristic\"\ncuda_arena = \"next-power-of-two\"\n",
        )
        .unwrap();
        let c = Cli::parse_from(["x", "--config", p.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert!(c.runtime.cuda_tf32);
        assert_eq!(c.runtime.cuda_conv_algo, ConvAlgo::Heuristic);
        assert_eq!(c.runtime.cuda_arena, ArenaGrowth::NextPowerOfTwo);
        let c = Cli::parse_from([
            "x",
            "--config",
            p.to_str().unwrap(),
            "--cuda-tf32",
            "false",
            "--cuda-prefer-nhwc",
            "false",
            "--io-binding",
            "false",
        ])
        .resolve()
        .unwrap();
        assert!(!c.runtime.cuda_tf32 && !c.runtime.cuda_prefer_nhwc && !c.runtime.io_binding);
        // Defaults: TF32 off (CPU↔CUDA parity), NHWC, exhaustive search, exact arena growth.
        let d = RuntimeConfig::default();
        assert!(!d.cuda_tf32 && d.cuda_prefer_nhwc && d.io_binding);
        assert_eq!(d.cuda_conv_algo, ConvAlgo::Exhaustive);
        assert_eq!(d.cuda_arena, ArenaGrowth::SameAsRequested);
        let e = Cli::try_parse_from(["x", "--cuda-conv-algo", "fast"]).unwrap_err();
        assert!(e.to_string().contains("heuristic"), "{e}");
    }

    /// `input_size`: one `[h, w]` or a list in TOML, comma-separated on the command line; the
    /// printed configuration reads back; a size given twice or out of range is refused.
    #[test]
    fn one_or_several_input_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serve.toml");
        let parse = |toml: &str| {
            std::fs::write(&p, toml).unwrap();
            Cli::parse_from(["x", "--config", p.to_str().unwrap()]).resolve()
        };
        assert_eq!(
            parse("input_size = [800, 1333]\n").unwrap().input_size,
            vec![[800, 1333]]
        );
        let c = parse("input_size = [[800, 1333], [1333, 800]]\n").unwrap();
        assert_eq!(c.input_size, vec![[800, 1333], [1333, 800]]);
        let again: ServeConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again.input_size, c.input_size);
        let none: ServeConfig = toml::from_str(&ServeConfig::default().to_toml()).unwrap();
        assert!(none.input_size.is_empty());
        let e = parse("input_size = 800\n").unwrap_err().to_string();
        assert!(e.contains("[[800, 1333], [1333, 800]]"), "{e}");
        let c = Cli::parse_from(["x", "--input-size", "800x1333,1333x800"])
            .resolve()
            .unwrap();
        assert_eq!(c.input_size, vec![[800, 1333], [1333, 800]]);
        let e = Cli::parse_from(["x", "--input-size", "64x96,64x96"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("64x96 is given twice"), "{e}");
        let e = Cli::parse_from(["x", "--input-size", "64x96,8x8"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("input_size 8x8"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serve.toml");
        std::fs::write(&p, "[batching]\nmax_batch = 4\n").unwrap();
        let e = Cli::parse_from(["x", "--config", p.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("max_batch"), "{e}");
        let e = Cli::parse_from(["x", "--score-threshold", "1.5"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("score_threshold"), "{e}");
        let e = Cli::parse_from(["x", "--batch-sizes", "1,2", "--max-batch-size", "8"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("max_batch_size"), "{e}");
    }
}
