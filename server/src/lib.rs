//! `codetr-serve`: serves a codetr ONNX graph (docs/DESIGN.md §7 contract) over HTTP.
//!
//! Request path: [`api`] (axum handlers) → [`request`] (body forms, parameters) → [`decode`]
//! (limits, EXIF, resize; blocking pool) → [`batcher`] (bounded queue, dynamic batches) →
//! [`engine`] (one ONNX Runtime session per worker thread). [`serve`] wires it together with
//! warm-up, readiness and graceful shutdown.

pub mod api;
pub mod batcher;
pub mod config;
pub mod decode;
pub mod drift;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod request;
pub mod staging;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::batcher::BatchPolicy;
use crate::config::ServeConfig;
use crate::engine::Runner;
pub use crate::error::{Result, ServeError};

/// The bearer token: `CODETR_SERVE_AUTH_TOKEN`, else the configured file, else none.
fn auth_token(cfg: &ServeConfig) -> Result<Option<String>> {
    let token = match std::env::var("CODETR_SERVE_AUTH_TOKEN") {
        Ok(t) => Some(t),
        Err(_) => match &cfg.http.auth_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| ServeError::Io(format!("auth token file {}: {e}", p.display())))?,
            ),
            None => None,
        },
    };
    match token.map(|t| t.trim().to_owned()) {
        Some(t) if t.is_empty() => Err(ServeError::Config("the auth token is empty".into())),
        t => Ok(t),
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// `n` more sessions of the graph on the provider that took (`only`), each opened on its own
/// thread: ONNX Runtime takes up to a minute to create a session for a large graph (its memory
/// planner on the gather lowering of `paper-r50`: 40 s, `bench/results/session_init.json`),
/// so `n` of them one after another would hold the server's start `n` times that. TensorRT's
/// are still opened one at a time: each may build an engine, and builds side by side would
/// hold several builders' GPU memory at once. The first error is returned.
fn open_sessions(
    n: usize,
    env: &'static ort::environment::Environment,
    path: &std::path::Path,
    only: &config::RuntimeConfig,
    sizes: &[usize],
    model: &engine::ModelInfo,
) -> Result<Vec<ort::session::Session>> {
    let start = std::time::Instant::now();
    let open = move || engine::open(env, path, only, sizes, Some(model)).map(|(s, _, _)| s);
    let side_by_side = !only.providers.contains(&config::Provider::Tensorrt);
    let sessions = if side_by_side {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n).map(|_| scope.spawn(open)).collect();
            handles
                .into_iter()
                .map(|h| joined(h, "a worker's session"))
                .collect::<Result<Vec<_>>>()
        })?
    } else {
        (0..n).map(|_| open()).collect::<Result<Vec<_>>>()?
    };
    if n > 0 {
        tracing::info!(
            sessions = n,
            side_by_side,
            seconds = start.elapsed().as_secs_f64(),
            "further worker sessions opened"
        );
    }
    Ok(sessions)
}

/// A session-opening thread's result; its panic becomes an error naming `what` it opened.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>, what: &str) -> Result<T> {
    h.join().unwrap_or_else(|_| {
        Err(ServeError::Runtime(format!(
            "the thread opening {what} panicked"
        )))
    })
}

/// Builds the sessions (provider selection), starts the workers, publishes the engine, and
/// blocks until every worker has warmed up at every batch size; then marks the server ready.
fn load(
    state: &api::AppState,
    env: &'static ort::environment::Environment,
    path: &std::path::Path,
) -> Result<()> {
    let cfg = &state.config;
    let mut sizes = cfg.batching.effective_sizes();
    // The first session validates the file and picks the provider; the other workers use
    // that provider only, so every worker runs on the same one.
    let opened = std::time::Instant::now();
    let (first, provider, failures) = engine::open(env, path, &cfg.runtime, &sizes, None)?;
    let session_seconds = opened.elapsed().as_secs_f64();
    let model = engine::inspect(&first, path, &cfg.input_size)?;
    if cfg.runtime.require_gpu && !provider.is_gpu() {
        return Err(ServeError::Runtime(format!(
            "--require-gpu: no GPU provider took (tried {}); running on {} is refused",
            failures
                .iter()
                .map(|f| format!("{}: {}", f.provider.as_str(), f.error))
                .collect::<Vec<_>>()
                .join("; "),
            provider.as_str()
        )));
    }
    let over_limit = batch_bound(&model, &mut sizes)?;
    for ([h, w], [ah, aw]) in misaligned_sizes(&model) {
        tracing::warn!(
            "input size {h}x{w} is not a multiple of the graph's coarsest feature stride ({}): \
             a padded image's mask falls between features at some levels, which can count a \
             row or column of padding as image and moves detections; {ah}x{aw} keeps it \
             aligned (bench/results/padding_effect.md)",
            model.meta.size_multiple.unwrap_or(1)
        );
    }
    let mut only = cfg.runtime.clone();
    only.providers = vec![provider];
    // TensorRT's optimisation profiles need the input size from the metadata: re-open.
    let first = if provider == config::Provider::Tensorrt {
        engine::open(env, path, &only, &sizes, Some(&model))?.0
    } else {
        first
    };
    if !failures.is_empty() {
        tracing::warn!(
            "PROVIDER FALLBACK: running on {} because {}",
            provider.as_str(),
            failures
                .iter()
                .map(|f| format!("{} failed ({})", f.provider.as_str(), f.error))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    tracing::info!(
        model = %path.display(),
        name = %model.name,
        version = %model.version,
        classes = model.meta.classes.len(),
        input = %engine::show_sizes(&model.input_sizes),
        top_k = model.meta.max_detections,
        provider = provider.as_str(),
        session_seconds,
        "model loaded"
    );
    // The other workers' sessions open while the first one checks I/O binding (a run of the
    // model: as long as a session's creation on the CPU for a large graph).
    let mut runtime = cfg.runtime.clone();
    let workers = cfg.batching.workers;
    let (first, others) = std::thread::scope(|scope| {
        let others = scope.spawn(|| open_sessions(workers - 1, env, path, &only, &sizes, &model));
        let first = Runner::new(first, provider, &model, &runtime).map(|mut first| {
            let hw = model.input_sizes.first().copied();
            if let Some(e) = hw.and_then(|hw| crate::batcher::check_binding(&mut first, hw)) {
                tracing::error!(
                    provider = provider.as_str(),
                    "I/O BINDING FALLBACK: a run through I/O binding failed ({e}) where a plain \
                     run works; every worker runs without it (io_binding = false)"
                );
                runtime.io_binding = false;
            }
            first
        });
        (first, joined(others, "the workers' sessions"))
    });
    let mut runners = vec![first?];
    for session in others? {
        runners.push(Runner::new(session, provider, &model, &runtime)?);
    }
    let (io_binding, host_memory) = (runners[0].io_binding(), runners[0].host_memory());
    tracing::info!(io_binding, host_memory = ?host_memory, "batch staging");
    let requested = cfg
        .runtime
        .providers
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(",");
    ::metrics::gauge!(metrics::PROVIDER_INFO, "provider" => provider.as_str(), "requested" => requested)
        .set(1.0);

    let (warm_tx, warm_rx) = std::sync::mpsc::channel();
    let policy = BatchPolicy {
        sizes: sizes.clone(),
        max_queue_delay: Duration::from_micros(cfg.batching.max_queue_delay_us),
        input_sizes: model.input_sizes.clone(),
    };
    // The worker threads live as long as the process; they stop once the queue closes.
    let (batcher, _workers) =
        batcher::start(runners, policy, cfg.batching.max_queue_size, warm_tx)?;
    let _ = state.engine.set(api::Engine {
        model,
        provider,
        provider_failures: failures,
        io_binding,
        host_memory,
        batcher,
        warmup: std::sync::OnceLock::new(),
    });
    // The sizes every worker runs: each keeps those below its first failure.
    let mut served = sizes.clone();
    let mut dropped = Vec::new();
    for _ in 0..cfg.batching.workers {
        match warm_rx.recv() {
            Ok(Ok(w)) => {
                served.retain(|s| w.sizes.contains(s));
                dropped.extend(w.failure);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ServeError::Runtime("a worker exited during warm-up".into())),
        }
    }
    let largest = served.last().copied().unwrap_or(1);
    ::metrics::gauge!(metrics::MAX_BATCH).set(largest as f64);
    if let Some(e) = state.engine.get() {
        let _ = e.warmup.set(api::Warmup {
            batch_sizes: served.clone(),
            failures: dropped.clone(),
            over_limit: over_limit.clone(),
        });
    }
    state.ready.store(true, Ordering::Relaxed);
    ::metrics::gauge!(metrics::READY).set(1.0);
    if dropped.is_empty() && over_limit.is_empty() {
        tracing::info!(batch_sizes = ?served, "ready: warmed at every batch size");
    } else {
        tracing::warn!(
            batch_sizes = ?served,
            "ready with the largest batch lowered to {largest} (configured {}); above the \
             graph's bound: {over_limit:?}; failed at warm-up: [{}]",
            cfg.batching.max_batch_size,
            dropped
                .iter()
                .map(|f| format!("worker {} batch {}: {}", f.worker, f.batch, f.error))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// The served input sizes of a letterbox graph that are not multiples of its
/// `codetr.size_multiple`, each with the aligned size to serve instead.
fn misaligned_sizes(model: &engine::ModelInfo) -> Vec<([u32; 2], [u32; 2])> {
    model
        .input_sizes
        .iter()
        .filter_map(|&hw| model.meta.aligned_size(hw).map(|a| (hw, a)))
        .collect()
}

/// Drops the batch sizes above the graph's 32-bit bound before any of them runs: on CUDA such a
/// batch fails with an illegal memory access that leaves the process's GPU context unusable,
/// so it cannot be tried and recovered from like an out-of-memory. The bound is the exporter's
/// (shape inference): `codetr.max_batch` at a fixed graph's size, `codetr.max_batch_at` for
/// each size a dynamic-size graph is served at; with several sizes the smallest applies. A
/// served size the graph records no bound for relies on the warm-up fallback alone, loudly.
/// Returns the sizes dropped; an error when none is left.
fn batch_bound(model: &engine::ModelInfo, sizes: &mut Vec<usize>) -> Result<Vec<usize>> {
    let mut bound: Option<u64> = None;
    for &[h, w] in &model.input_sizes {
        match model.meta.max_batch_for([h, w]) {
            Some(b) => bound = Some(bound.map_or(b, |a| a.min(b))),
            // A fixed graph from before the bound was recorded: nothing to say.
            None if model.meta.input_size.is_some() => {}
            None => tracing::warn!(
                "NO BATCH BOUND for input size {h}x{w}: the graph records none there (export \
                 with --dynamic-size --bound-sizes {h}x{w}); a batch whose tensors reach 2^31 \
                 elements would fail on CUDA and leave the GPU context unusable"
            ),
        }
    }
    let Some(bound) = bound else {
        return Ok(Vec::new());
    };
    let over: Vec<usize> = sizes
        .iter()
        .copied()
        .filter(|&n| n as u64 > bound)
        .collect();
    if over.is_empty() {
        return Ok(over);
    }
    sizes.retain(|&n| n as u64 <= bound);
    if sizes.is_empty() {
        return Err(ServeError::Model(format!(
            "{}: every configured batch size ({over:?}) is above the graph's bound of {bound} \
             (codetr.max_batch: a tensor reaches 2^31 elements above it); configure \
             --batch-sizes / --max-batch-size within it",
            model.path.display()
        )));
    }
    tracing::error!(
        "BATCH SIZE DROPPED: {over:?} above the graph's bound of {bound} images (codetr.max_batch: \
         a tensor reaches 2^31 elements, which CUDA kernels cannot index); serving batches up \
         to {}",
        sizes.last().copied().unwrap_or(1)
    );
    Ok(over)
}

/// Listens at once (so `/healthz` and `/metrics` answer while sessions build — TensorRT engine
/// builds take minutes), loads the model and warms it up in the background (`/readyz` says
/// 200 only after that), and serves until SIGINT/SIGTERM (then drains) or until loading fails
/// (then returns the error).
pub async fn serve(cfg: ServeConfig) -> Result<()> {
    let path = cfg.model.clone().ok_or_else(|| {
        ServeError::Config("no model: pass --model PATH (or set `model` in the config)".into())
    })?;
    // A model directory (as shipped under models/) holds its graph as model.onnx.
    let path = if path.is_dir() {
        path.join("model.onnx")
    } else {
        path
    };
    if !path.is_file() {
        return Err(ServeError::Model(format!(
            "{}: no such file",
            path.display()
        )));
    }
    let auth_token = auth_token(&cfg)?;
    let env = engine::environment(cfg.ort_lib.as_deref())?;
    let prometheus = metrics::install(cfg.batching.max_batch_size)?;
    ::metrics::gauge!(metrics::READY).set(0.0);

    let listener = tokio::net::TcpListener::bind(cfg.bind)
        .await
        .map_err(|e| ServeError::Io(format!("cannot listen on {}: {e}", cfg.bind)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Io(format!("local address: {e}")))?;
    let drain = Duration::from_secs(cfg.http.drain_timeout_s);
    let state = Arc::new(api::AppState {
        engine: std::sync::OnceLock::new(),
        config: cfg,
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        auth_token,
        prometheus,
        seq: AtomicU64::new(0),
    });
    tracing::info!("listening on http://{addr}");

    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<ServeError>(1);
    {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = load(&state, env, &path) {
                let _ = fatal_tx.blocking_send(e);
            }
        });
    }

    let app = api::router(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut fatal: Option<ServeError> = None;
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }
    });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        r = &mut server => {
            return r.map_err(|e| ServeError::Io(format!("server: {e}")));
        }
        () = shutdown_signal() => {
            tracing::info!(drain_timeout_s = drain.as_secs(), "shutdown requested: draining admitted requests");
        }
        Some(e) = fatal_rx.recv() => {
            tracing::error!("{e}");
            fatal = Some(e);
        }
    }
    state.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    match tokio::time::timeout(drain, &mut server).await {
        Ok(Ok(())) => tracing::info!("drained; exiting"),
        Ok(Err(e)) => tracing::error!("server error while draining: {e}"),
        Err(_) => tracing::warn!(
            queued = state.engine.get().map_or(0, |e| e.batcher.depth()),
            "drain timeout passed with requests still open; exiting anyway"
        ),
    }
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codetr_model::{ModelMetadata, Resize};

    fn model(max_batch: Option<u64>, fixed: bool) -> engine::ModelInfo {
        let meta = ModelMetadata {
            format_version: Resize::Stretch.min_format_version(),
            classes: vec!["a".into()],
            input_size: fixed.then_some([800, 800]),
            resize: Resize::Stretch,
            mean: [0.0; 3],
            std: [1.0; 3],
            max_detections: 10,
            preset: "paper-r50".into(),
            checkpoint_sha256: "0".repeat(64),
            metrics: Default::default(),
            msda: None,
            precision: None,
            max_batch,
            letterbox_limits: None,
            max_batch_at: Vec::new(),
            size_multiple: None,
        };
        engine::ModelInfo {
            path: "m.onnx".into(),
            name: "m".into(),
            version: "0".into(),
            meta,
            input_sizes: vec![[800, 800]],
        }
    }

    #[test]
    fn batch_sizes_above_the_graph_bound_are_dropped_before_they_run() {
        let mut sizes = vec![1, 8, 16, 64];
        let over = batch_bound(&model(Some(19), true), &mut sizes).unwrap();
        assert_eq!(sizes, vec![1, 8, 16]);
        assert_eq!(over, vec![64]);
        // No bound recorded (an older export), or a dynamic-size graph without bounds at its
        // sizes: nothing dropped here (the warm-up fallback still applies).
        for m in [model(None, true), model(Some(19), false)] {
            let mut sizes = vec![1, 8, 64];
            assert!(batch_bound(&m, &mut sizes).unwrap().is_empty());
            assert_eq!(sizes, vec![1, 8, 64]);
        }
        // Nothing left: a clear error naming the bound and the flags.
        let mut sizes = vec![32, 64];
        let e = batch_bound(&model(Some(19), true), &mut sizes).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("bound of 19") && m.contains("--batch-sizes"),
            "{m}"
        );
    }

    /// A letterbox graph recording its stride: each served size off its multiple is named with
    /// the aligned size; aligned sizes and graphs without a record say nothing.
    #[test]
    fn canvases_off_the_coarsest_stride_are_named_with_the_aligned_size() {
        let mut m = model(None, false);
        m.input_sizes = vec![[800, 1333], [1333, 800], [832, 1344]];
        assert!(misaligned_sizes(&m).is_empty(), "no multiple recorded");
        m.meta.resize = Resize::Letterbox;
        m.meta.size_multiple = Some(64);
        m.meta.format_version = m.meta.min_format_version();
        assert_eq!(m.meta.format_version, 5);
        m.meta.validate().unwrap();
        assert_eq!(
            misaligned_sizes(&m),
            vec![([800, 1333], [832, 1344]), ([1333, 800], [1344, 832])]
        );
    }

    /// A dynamic-size graph served at several sizes: the smallest recorded bound among them
    /// applies; a size without a record adds none.
    #[test]
    fn a_dynamic_graph_is_bounded_at_the_sizes_it_is_served_at() {
        let at = |h, w, n| codetr_model::SizeBound {
            input_size: [h, w],
            max_batch: n,
        };
        let mut m = model(Some(19), false);
        m.meta.max_batch_at = vec![at(800, 1333, 11), at(1333, 800, 9), at(1333, 1333, 7)];
        m.input_sizes = vec![[800, 1333], [1333, 800]];
        let mut sizes = vec![1, 8, 10, 16];
        assert_eq!(batch_bound(&m, &mut sizes).unwrap(), vec![10, 16]);
        assert_eq!(sizes, vec![1, 8]);
        m.input_sizes = vec![[800, 1333], [640, 640]];
        let mut sizes = vec![1, 8, 16];
        assert_eq!(batch_bound(&m, &mut sizes).unwrap(), vec![16]);
        // The graph's max_batch (at its export size) says nothing about a served size.
        m.input_sizes = vec![[800, 800]];
        let mut sizes = vec![1, 32];
        assert!(batch_bound(&m, &mut sizes).unwrap().is_empty());
    }
}
