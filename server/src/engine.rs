//! ONNX Runtime: loading the library, reading and checking the graph against the docs/DESIGN.md §7
//! contract, choosing an execution provider, and running one padded batch.
//!
//! Providers are registered one at a time with `error_on_failure`, each on a fresh session
//! builder, so the server knows which one took instead of ort silently falling back to CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use codetr_model::ModelMetadata;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use crate::config::{Provider, RuntimeConfig};
use crate::error::{Result, ServeError};
use crate::staging::{HostMemory, Staging};

/// What the server knows about the model it serves.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The ONNX file.
    pub path: PathBuf,
    /// Name shown to clients: the file's stem.
    pub name: String,
    /// Version shown to clients: the first 12 hex digits of the source checkpoint's SHA-256.
    pub version: String,
    /// The graph's metadata (classes, input size, top-k, …).
    pub meta: ModelMetadata,
    /// The `[height, width]` inputs images are resized to: the fixed graph's one, or the
    /// configured ones of a dynamic-size graph (several for a letterbox graph; each image goes
    /// to the one [`codetr_model::preprocess::pick_canvas`] picks). Never empty.
    pub input_sizes: Vec<[u32; 2]>,
}

/// One session, the provider it runs on, and where its batches are staged.
pub struct Runner {
    session: Session,
    /// The provider that took.
    pub provider: Provider,
    staging: Staging,
}

/// One image's sizes as the graph takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSizes {
    /// Original `(height, width)`: the graph scales boxes to it.
    pub orig: [u32; 2],
    /// `(height, width)` of the resized image inside the input, from its top-left corner: the
    /// whole input for a stretch graph, less for a letterboxed one.
    pub valid: [u32; 2],
}

impl ImageSizes {
    /// An image that fills the whole `[h, w]` input (warm-up and padding rows).
    pub fn full(hw: [u32; 2]) -> Self {
        Self {
            orig: hw,
            valid: hw,
        }
    }
}

/// A provider that was asked for and did not take, with why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProviderFailure {
    /// The provider.
    pub provider: Provider,
    /// ONNX Runtime's (or our) reason.
    pub error: String,
}

/// Raw outputs of one batch: `n` images × `k` detections.
#[derive(Debug, Clone)]
pub struct BatchOutput {
    /// `[n, k]` class indices.
    pub labels: Vec<i64>,
    /// `[n, k]` scores, descending per image.
    pub scores: Vec<f32>,
    /// `[n, k, 4]` xyxy boxes in original pixels.
    pub boxes: Vec<f32>,
    /// Detections per image.
    pub k: usize,
}

/// The process's one ONNX Runtime environment, from the first library path asked for. A failed
/// load is kept as text: turning a `LoadDynamicError` into `ort::Error` would call into the
/// library that failed to load (docs/DESIGN.md §12).
pub fn environment(lib: Option<&Path>) -> Result<&'static Environment> {
    static ENV: OnceLock<std::result::Result<(Environment, PathBuf), String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = codetr_model::find_ort_library(lib).ok_or_else(|| {
            format!(
                "no ONNX Runtime library found (looked at {}); set ORT_DYLIB_PATH or --ort-lib, \
                 or run scripts/install-ort.sh",
                codetr_model::ort_library_candidates(lib)
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let env = ort::init_from(&path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?
            .with_name("codetr-serve")
            .build()
            .map_err(|e| format!("environment: {e}"))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok((env, path))
    })
    .as_ref()
    .map(|(e, _)| e)
    .map_err(|e| ServeError::Runtime(e.clone()))
}

/// `64x96,96x64`: sizes as the `--input-size` flag writes them.
pub fn show_sizes(sizes: &[[u32; 2]]) -> String {
    sizes
        .iter()
        .map(|[h, w]| format!("{h}x{w}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn model_err(path: &Path, m: impl std::fmt::Display) -> ServeError {
    ServeError::Model(format!("{}: {m}", path.display()))
}

/// Builds a session on the first provider in `cfg.providers` that registers and loads the
/// graph. Returns it with the failures of the providers tried before it.
pub fn open(
    env: &'static Environment,
    path: &Path,
    cfg: &RuntimeConfig,
    batch_sizes: &[usize],
    model: Option<&ModelInfo>,
) -> Result<(Session, Provider, Vec<ProviderFailure>)> {
    if !path.is_file() {
        return Err(model_err(path, "no such file"));
    }
    let mut failures = Vec::new();
    for &p in &cfg.providers {
        match try_provider(env, path, cfg, p, batch_sizes, model) {
            Ok(s) => return Ok((s, p, failures)),
            Err(ServeError::Model(m)) => return Err(ServeError::Model(m)),
            Err(e) => {
                tracing::warn!(provider = p.as_str(), "provider did not take: {e}");
                failures.push(ProviderFailure {
                    provider: p,
                    error: e.to_string(),
                });
            }
        }
    }
    Err(ServeError::Runtime(format!(
        "no provider could run the graph: {}",
        failures
            .iter()
            .map(|f| format!("{}: {}", f.provider.as_str(), f.error))
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

fn builder(
    env: &'static Environment,
    cfg: &RuntimeConfig,
) -> Result<ort::session::builder::SessionBuilder> {
    let rt =
        |e: ort::Error<ort::session::builder::SessionBuilder>| ServeError::Runtime(e.to_string());
    let mut b = Session::builder(env).map_err(|e| ServeError::Runtime(e.to_string()))?;
    if cfg.intra_threads > 0 {
        b = b.with_intra_threads(cfg.intra_threads).map_err(rt)?;
    }
    if let Some(prefix) = &cfg.profile {
        b = b.with_profiling(prefix).map_err(rt)?;
    }
    Ok(b)
}

fn commit(mut b: ort::session::builder::SessionBuilder, path: &Path) -> Result<Session> {
    let bytes = std::fs::read(path).map_err(|e| model_err(path, e))?;
    b.commit_from_memory(&bytes)
        .map_err(|e| model_err(path, format!("ONNX Runtime cannot load it: {e}")))
}

#[cfg_attr(not(feature = "gpu"), allow(unused_variables))]
fn try_provider(
    env: &'static Environment,
    path: &Path,
    cfg: &RuntimeConfig,
    p: Provider,
    batch_sizes: &[usize],
    model: Option<&ModelInfo>,
) -> Result<Session> {
    let b = builder(env, cfg)?;
    match p {
        Provider::Cpu => commit(b, path),
        #[cfg(feature = "gpu")]
        Provider::Cuda | Provider::Tensorrt => {
            use ort::ep;
            let dispatch = if p == Provider::Cuda {
                use crate::config::{ArenaGrowth, ConvAlgo};
                use ep::cuda::ConvAlgorithmSearch as Search;
                let mut cuda = ep::CUDA::default();
                if cfg.cuda_memory_limit_mb > 0 {
                    // MiB → bytes; a cap past what usize holds is no cap at all.
                    let bytes = usize::try_from(cfg.cuda_memory_limit_mb)
                        .ok()
                        .and_then(|mb| mb.checked_mul(1 << 20))
                        .unwrap_or(usize::MAX);
                    cuda = cuda.with_memory_limit(bytes);
                }
                cuda.with_device_id(cfg.device_id)
                    .with_tf32(cfg.cuda_tf32)
                    .with_conv_algorithm_search(match cfg.cuda_conv_algo {
                        ConvAlgo::Exhaustive => Search::Exhaustive,
                        ConvAlgo::Heuristic => Search::Heuristic,
                        ConvAlgo::Default => Search::Default,
                    })
                    .with_arena_extend_strategy(match cfg.cuda_arena {
                        ArenaGrowth::NextPowerOfTwo => ep::ArenaExtendStrategy::NextPowerOfTwo,
                        ArenaGrowth::SameAsRequested => ep::ArenaExtendStrategy::SameAsRequested,
                    })
                    .with_prefer_nhwc(cfg.cuda_prefer_nhwc)
                    .build()
            } else {
                std::fs::create_dir_all(&cfg.trt_cache_dir).map_err(|e| {
                    ServeError::Runtime(format!(
                        "TensorRT cache dir {}: {e}",
                        cfg.trt_cache_dir.display()
                    ))
                })?;
                let dir = cfg.trt_cache_dir.display().to_string();
                let mut trt = ep::TensorRT::default()
                    .with_device_id(cfg.device_id)
                    .with_fp16(cfg.trt_fp16)
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&dir);
                // One optimisation profile spanning the batch sizes the batcher uses, so no
                // request shape triggers an engine rebuild.
                // Its image sides span every configured input size (one for a fixed graph).
                if let Some(model) = model {
                    let side = |i: usize, f: fn(u32, u32) -> u32| {
                        model
                            .input_sizes
                            .iter()
                            .map(|s| s[i])
                            .reduce(f)
                            .unwrap_or(1)
                    };
                    let lo_hw = [side(0, u32::min), side(1, u32::min)];
                    let hi_hw = [side(0, u32::max), side(1, u32::max)];
                    let shapes = |n: usize, [h, w]: [u32; 2]| {
                        model
                            .meta
                            .resize
                            .inputs()
                            .iter()
                            .map(|&name| {
                                if name == codetr_model::INPUT_IMAGES {
                                    format!("{name}:{n}x{h}x{w}x3")
                                } else {
                                    format!("{name}:{n}x2")
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let lo = batch_sizes.first().copied().unwrap_or(1);
                    let hi = batch_sizes.last().copied().unwrap_or(1);
                    let opt_hw = model.input_sizes.first().copied().unwrap_or(hi_hw);
                    trt = trt
                        .with_profile_min_shapes(shapes(lo, lo_hw))
                        .with_profile_opt_shapes(shapes(hi, opt_hw))
                        .with_profile_max_shapes(shapes(hi, hi_hw));
                }
                trt.build()
            };
            let b = b
                .with_execution_providers([dispatch.error_on_failure()])
                .map_err(|e| ServeError::Runtime(e.to_string()))?;
            commit(b, path)
        }
        #[cfg(not(feature = "gpu"))]
        Provider::Cuda | Provider::Tensorrt => Err(ServeError::Runtime(format!(
            "{} needs codetr-serve built with `--features gpu`",
            p.as_str()
        ))),
    }
}

/// Reads the metadata of a session's graph and checks its inputs and outputs against the
/// contract. `input_sizes` are the configured sizes: required for a dynamic-size graph (several
/// only for a letterbox one), and absent or the fixed size for a fixed graph.
pub fn inspect(session: &Session, path: &Path, input_sizes: &[[u32; 2]]) -> Result<ModelInfo> {
    let md = session
        .metadata()
        .map_err(|e| model_err(path, format!("no metadata: {e}")))?;
    let keys = md
        .custom_keys()
        .map_err(|e| model_err(path, format!("metadata keys: {e}")))?;
    let props: HashMap<String, String> = keys
        .into_iter()
        .filter_map(|k| md.custom(&k).map(|v| (k, v)))
        .collect();
    let meta = ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| model_err(path, format!("metadata: {e}")))?;
    let input_sizes = match (meta.input_size, input_sizes) {
        (Some(fixed), []) => vec![fixed],
        (Some(fixed), [asked]) if fixed == *asked => vec![fixed],
        (Some([h, w]), asked) => {
            return Err(model_err(
                path,
                format!(
                    "the graph's input is fixed at {h}x{w}; input_size {} differs (a graph \
                     exported with --dynamic-size takes other and several sizes)",
                    show_sizes(asked)
                ),
            ));
        }
        (None, []) => {
            return Err(model_err(
                path,
                "the graph has a dynamic input size (--dynamic-size): give the size to resize \
                 to with --input-size HxW (or input_size = [h, w] in the TOML)",
            ));
        }
        (None, asked) if asked.len() > 1 && meta.resize != codetr_model::Resize::Letterbox => {
            return Err(model_err(
                path,
                format!(
                    "several input sizes ({}) need a letterbox graph (codetr-export --resize \
                     letterbox --dynamic-size); this one stretches, so give one size",
                    show_sizes(asked)
                ),
            ));
        }
        (None, asked) => asked.to_vec(),
    };
    let check = |outlets: &[ort::value::Outlet],
                 want: &[(&str, TensorElementType, usize)],
                 what: &str|
     -> Result<()> {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        let wanted: Vec<&str> = want.iter().map(|w| w.0).collect();
        if names != wanted {
            return Err(model_err(
                path,
                format!("{what} are {names:?}, the contract says {wanted:?}"),
            ));
        }
        for (o, &(name, ty, rank)) in outlets.iter().zip(want) {
            match o.dtype() {
                ValueType::Tensor { ty: t, shape, .. } if *t == ty && shape.len() == rank => {}
                other => {
                    return Err(model_err(
                        path,
                        format!(
                            "{what} `{name}` is {other:?}; the contract says a rank-{rank} {ty:?} tensor"
                        ),
                    ));
                }
            }
        }
        Ok(())
    };
    use codetr_model::{INPUT_IMAGES, OUTPUT_BOXES, OUTPUT_LABELS, OUTPUT_SCORES};
    // The inputs follow the resize the metadata declares (a letterbox graph, format
    // version 2, also takes each image's valid size).
    let inputs: Vec<(&str, TensorElementType, usize)> = meta
        .resize
        .inputs()
        .iter()
        .map(|&name| {
            // images uint8 NHWC; the size inputs int64 [N, 2]
            if name == INPUT_IMAGES {
                (name, TensorElementType::Uint8, 4)
            } else {
                (name, TensorElementType::Int64, 2)
            }
        })
        .collect();
    check(session.inputs(), &inputs, "inputs")?;
    check(
        session.outputs(),
        &[
            (OUTPUT_LABELS, TensorElementType::Int64, 2),
            (OUTPUT_SCORES, TensorElementType::Float32, 2),
            (OUTPUT_BOXES, TensorElementType::Float32, 3),
        ],
        "outputs",
    )?;
    // A shipped model directory holds `model.onnx`: the directory's name is the model's.
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
    };
    let name = match stem(path) {
        Some(s) if s == "model" => path.parent().and_then(|d| {
            d.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.is_empty())
        }),
        other => other,
    }
    .unwrap_or_else(|| meta.preset.clone());
    Ok(ModelInfo {
        path: path.to_path_buf(),
        name,
        version: meta.checkpoint_sha256.chars().take(12).collect(),
        input_sizes,
        meta,
    })
}

/// What the batcher needs of a session: a buffer to write one padded batch into, and a run of
/// it. [`Runner`] is the real one; tests inject failures with their own.
pub trait Infer: Send + 'static {
    /// The `[n, H, W, 3]` RGB8 buffer at input size `hw` = `[H, W]` that the next
    /// [`Infer::infer`] of `n` images reads. The caller writes every byte. It is reused from
    /// call to call (pinned host memory under a GPU provider with I/O binding).
    fn input(&mut self, hw: [u32; 2], n: usize) -> Result<&mut [u8]>;

    /// Runs the `n` images last written to [`Infer::input`]`(hw, n)`; `sizes` are each
    /// image's original and valid size.
    fn infer(&mut self, hw: [u32; 2], n: usize, sizes: &[ImageSizes]) -> Result<BatchOutput>;

    /// Stops staging through I/O binding (frees the bound buffers); `false` if it was not.
    fn unbind(&mut self) -> bool {
        false
    }
}

impl Infer for Runner {
    fn input(&mut self, hw: [u32; 2], n: usize) -> Result<&mut [u8]> {
        self.staging.input(&self.session, hw, n)
    }

    fn infer(&mut self, hw: [u32; 2], n: usize, sizes: &[ImageSizes]) -> Result<BatchOutput> {
        self.staging.run(&mut self.session, hw, n, sizes)
    }

    fn unbind(&mut self) -> bool {
        self.staging.unbind()
    }
}

impl Runner {
    /// Ends ONNX Runtime profiling (sessions built with `runtime.profile`) and returns the
    /// trace file's path.
    pub fn end_profiling(&mut self) -> Result<String> {
        self.session
            .end_profiling()
            .map_err(|e| ServeError::Runtime(format!("end profiling: {e}")))
    }

    /// Wraps a session opened by [`open`] for the model `info`, staging batches as
    /// `cfg.io_binding` says (see [`crate::staging`]).
    pub fn new(
        session: Session,
        provider: Provider,
        info: &ModelInfo,
        cfg: &RuntimeConfig,
    ) -> Result<Self> {
        let staging = Staging::new(
            &session,
            provider,
            cfg.device_id,
            cfg.io_binding,
            info.meta.max_detections,
            info.meta.resize == codetr_model::Resize::Letterbox,
        )?;
        Ok(Self {
            session,
            provider,
            staging,
        })
    }

    /// Whether runs go through I/O binding.
    pub fn io_binding(&self) -> bool {
        self.staging.bound()
    }

    /// The host memory batches are staged in.
    pub fn host_memory(&self) -> HostMemory {
        self.staging.memory()
    }

    /// Runs `n` images given as one `[n, H, W, 3]` buffer: [`Infer::input`], a copy, then
    /// [`Infer::infer`]. For callers that hold a whole batch already (tools, benchmarks).
    pub fn run(
        &mut self,
        hw: [u32; 2],
        n: usize,
        pixels: &[u8],
        sizes: &[ImageSizes],
    ) -> Result<BatchOutput> {
        let buf = self.input(hw, n)?;
        if buf.len() != pixels.len() {
            return Err(ServeError::Internal(format!(
                "batch of {n} at {hw:?}: {} pixel bytes, want {}",
                pixels.len(),
                buf.len()
            )));
        }
        buf.copy_from_slice(pixels);
        self.infer(hw, n, sizes)
    }
}
