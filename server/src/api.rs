//! Routes and handlers. `POST /v1/detect` goes: parse → check parameters → decode + resize on
//! the blocking pool → submit to the batcher → await (bounded by the deadline) → filter and
//! answer.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use codetr_model::filter;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::batcher::{Batcher, Job, JobOutput};
use crate::config::{Provider, ServeConfig};
use crate::decode;
use crate::engine::{ModelInfo, ProviderFailure};
use crate::error::{Result, ServeError};
use crate::metrics as m;
use crate::request::{self, ClassRef, RawParams};
use crate::staging::HostMemory;

/// The loaded model and the queue to its workers; set once loading has finished.
pub struct Engine {
    /// The served model.
    pub model: ModelInfo,
    /// The provider the sessions run on.
    pub provider: Provider,
    /// Providers asked for that did not take.
    pub provider_failures: Vec<ProviderFailure>,
    /// Whether batches run through ONNX Runtime I/O binding.
    pub io_binding: bool,
    /// The host memory batches are staged in.
    pub host_memory: HostMemory,
    /// The queue to the inference workers.
    pub batcher: Batcher,
    /// Batch sizes served and those dropped at warm-up (set once warm-up ends).
    pub warmup: OnceLock<Warmup>,
}

/// What warm-up left: the batch sizes every worker runs, and the sizes that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Warmup {
    /// Batch sizes every worker runs at (ascending); the last is the largest batch.
    pub batch_sizes: Vec<usize>,
    /// Sizes that failed (per worker) and were dropped with every larger one.
    pub failures: Vec<crate::batcher::WarmupFailure>,
    /// Configured sizes above the graph's 32-bit bound (`codetr.max_batch`), never run.
    pub over_limit: Vec<usize>,
}

/// Shared by every handler.
pub struct AppState {
    /// Set once the sessions are built (the server listens before that, so probes and
    /// metrics answer while TensorRT engines build).
    pub engine: OnceLock<Engine>,
    /// The effective configuration.
    pub config: ServeConfig,
    /// Set once every worker has warmed up at every batch size.
    pub ready: AtomicBool,
    /// Set when shutdown begins: `/readyz` turns 503 so load balancers stop sending.
    pub draining: AtomicBool,
    /// Bearer token for `/v1/*`, if any.
    pub auth_token: Option<String>,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// For request ids.
    pub seq: AtomicU64,
}

impl AppState {
    /// The engine, or 503 while it is still loading.
    pub fn engine(&self) -> Result<&Engine> {
        self.engine
            .get()
            .ok_or_else(|| ServeError::Unavailable("the model is still loading".into()))
    }
}

/// The demo page.
const INDEX_HTML: &str = include_str!("../static/index.html");

/// Builds the router with every route, the body limit, auth, metrics, CORS and panic catching.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/detect", post(detect))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let mut app = Router::new()
        .merge(v1)
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(middleware::from_fn(m::track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ));
    if let Some(cors) = cors_layer(&state.config.http.cors_origins) {
        app = app.layer(cors);
    }
    app.with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]),
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ServeError::Internal("the handler panicked (a bug; see the server log)".into()).into_response()
}

async fn not_found(req: Request) -> ServeError {
    ServeError::NotFound(format!("{} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed() -> ServeError {
    ServeError::MethodNotAllowed
}

/// Bearer-token check for `/v1/*`, in constant time.
async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.auth_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        use subtle::ConstantTimeEq;
        // Lengths differ → not equal; ct_eq on equal-length slices does not leak where.
        let ok = given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()));
        if !ok {
            return ServeError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(s): State<Arc<AppState>>) -> Result<Json<serde_json::Value>> {
    if s.draining.load(Ordering::Relaxed) {
        return Err(ServeError::Unavailable("shutting down".into()));
    }
    s.engine()?;
    if !s.ready.load(Ordering::Relaxed) {
        return Err(ServeError::Unavailable(
            "the model is still warming up".into(),
        ));
    }
    Ok(Json(serde_json::json!({"status": "ready"})))
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.prometheus.render(),
    )
        .into_response()
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::spec())
}

/// `GET /v1/models` body.
#[derive(Debug, Serialize)]
pub struct ModelsResponse {
    /// Name shown to clients (the file's stem).
    pub name: String,
    /// Short checkpoint hash.
    pub version: String,
    /// The provider running the graph.
    pub provider: &'static str,
    /// Providers asked for, in order.
    pub requested_providers: Vec<&'static str>,
    /// Providers asked for that did not take.
    pub provider_failures: Vec<ProviderFailure>,
    /// Whether batches run through ONNX Runtime I/O binding (`runtime.io_binding`).
    pub io_binding: bool,
    /// The host memory batches are staged in: `cuda-pinned` or `cpu`.
    pub host_memory: HostMemory,
    /// Whether warm-up has finished.
    pub ready: bool,
    /// Class names; `class_id` indexes this.
    pub classes: Vec<String>,
    /// The graph's metadata (classes, input size, top-k, …).
    pub metadata: codetr_model::ModelMetadata,
    /// The `[height, width]` inputs images are resized to: the graph's fixed size, or the
    /// configured ones of a dynamic-size graph (each image goes to the one it is shrunk least
    /// in).
    pub input_sizes: Vec<[u32; 2]>,
    /// Batching settings.
    pub batching: serde_json::Value,
    /// Default score threshold.
    pub score_threshold: f32,
}

async fn models(State(s): State<Arc<AppState>>) -> Result<Json<ModelsResponse>> {
    let b = &s.config.batching;
    let e = s.engine()?;
    Ok(Json(ModelsResponse {
        name: e.model.name.clone(),
        version: e.model.version.clone(),
        provider: e.provider.as_str(),
        requested_providers: s
            .config
            .runtime
            .providers
            .iter()
            .map(|p| p.as_str())
            .collect(),
        provider_failures: e.provider_failures.clone(),
        io_binding: e.io_binding,
        host_memory: e.host_memory,
        ready: s.ready.load(Ordering::Relaxed),
        classes: e.model.meta.classes.clone(),
        metadata: e.model.meta.clone(),
        input_sizes: e.model.input_sizes.clone(),
        batching: serde_json::json!({
            "max_batch_size": e.warmup.get().and_then(|w| w.batch_sizes.last().copied()).unwrap_or(b.max_batch_size),
            "batch_sizes": e.warmup.get().map_or_else(|| b.effective_sizes(), |w| w.batch_sizes.clone()),
            "configured_max_batch_size": b.max_batch_size,
            "warmup_failures": e.warmup.get().map(|w| w.failures.clone()).unwrap_or_default(),
            "over_graph_bound": e.warmup.get().map(|w| w.over_limit.clone()).unwrap_or_default(),
            // The graph's 32-bit bound at the sizes served (the smallest), if it records one.
            "graph_max_batch": e
                .model
                .input_sizes
                .iter()
                .filter_map(|&hw| e.model.meta.max_batch_for(hw))
                .min(),
            "max_queue_delay_us": b.max_queue_delay_us,
            "max_queue_size": b.max_queue_size,
            "timeout_ms": b.timeout_ms,
            "workers": b.workers,
        }),
        score_threshold: s.config.detect.score_threshold,
    }))
}

/// Detection parameters checked against the model.
#[derive(Debug, Clone)]
pub struct Params {
    /// Minimum score kept.
    pub score_threshold: f32,
    /// Most detections kept per image.
    pub max_detections: usize,
    /// Classes kept (`None` = all).
    pub classes: Option<HashSet<usize>>,
    /// Effective deadline.
    pub timeout_ms: u64,
}

/// Checks raw parameters against the model and the server's defaults and limits.
pub fn resolve_params(raw: RawParams, model: &ModelInfo, cfg: &ServeConfig) -> Result<Params> {
    let k = model.meta.max_detections;
    let score_threshold = match raw.score_threshold {
        None => cfg.detect.score_threshold,
        Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => v as f32,
        Some(v) => {
            return Err(ServeError::BadRequest(format!(
                "score_threshold must be in [0, 1], got {v}"
            )));
        }
    };
    let max_detections = match raw.max_detections {
        None => k,
        Some(v) if v >= 1 && v <= k as u64 => v as usize,
        Some(v) => {
            return Err(ServeError::BadRequest(format!(
                "max_detections must be in [1, {k}] (the graph's top-k), got {v}"
            )));
        }
    };
    let classes = match raw.classes {
        None => None,
        Some(list) => {
            let names = &model.meta.classes;
            let mut set = HashSet::new();
            for c in list {
                let id = match &c {
                    ClassRef::Id(i) if (*i as usize) < names.len() => *i as usize,
                    ClassRef::Id(i) => {
                        return Err(ServeError::BadRequest(format!(
                            "class id {i} is out of range (the model has {} classes)",
                            names.len()
                        )));
                    }
                    ClassRef::Name(n) => names.iter().position(|x| x == n).ok_or_else(|| {
                        ServeError::BadRequest(format!(
                            "unknown class {n:?} (known: {})",
                            names.join(", ")
                        ))
                    })?,
                };
                set.insert(id);
            }
            if set.is_empty() {
                return Err(ServeError::BadRequest("classes is empty".into()));
            }
            Some(set)
        }
    };
    // A request may shorten its deadline, not extend it past the server's.
    let timeout_ms = match raw.timeout_ms {
        None => cfg.batching.timeout_ms,
        Some(0) => return Err(ServeError::BadRequest("timeout_ms must be ≥ 1".into())),
        Some(v) => v.min(cfg.batching.timeout_ms),
    };
    Ok(Params {
        score_threshold,
        max_detections,
        classes,
        timeout_ms,
    })
}

/// One detection in the response.
#[derive(Debug, Serialize)]
pub struct Detection {
    /// Index into the model's classes.
    pub class_id: usize,
    /// The class name.
    pub label: String,
    /// Confidence in [0, 1].
    pub score: f32,
    /// Box in pixels of the EXIF-corrected original.
    #[serde(rename = "box")]
    pub bbox: BoxXyxy,
}

/// A box as corners.
#[derive(Debug, Serialize)]
pub struct BoxXyxy {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
}

/// One image's result.
#[derive(Debug, Serialize)]
pub struct ImageResult {
    /// Width of the EXIF-corrected original.
    pub width: u32,
    /// Height of the EXIF-corrected original.
    pub height: u32,
    /// Detections, highest score first.
    pub detections: Vec<Detection>,
}

/// Where the time went, in ms (maxima over the request's images for per-image stages).
#[derive(Debug, Serialize)]
pub struct Timings {
    /// Waiting in the batcher's queue.
    pub queue: f64,
    /// Decoding.
    pub decode: f64,
    /// Resizing to the graph's input.
    pub preprocess: f64,
    /// The session run of the batch.
    pub infer: f64,
    /// Handler start to response.
    pub total: f64,
}

/// `POST /v1/detect` body.
#[derive(Debug, Serialize)]
pub struct DetectResponse {
    /// Echoed from `X-Request-Id` or generated.
    pub request_id: String,
    /// Which model answered.
    pub model: ModelRef,
    /// One entry per image, in request order.
    pub images: Vec<ImageResult>,
    /// Where the time went.
    pub timings_ms: Timings,
}

/// The model that answered.
#[derive(Debug, Serialize)]
pub struct ModelRef {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Provider.
    pub provider: &'static str,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn request_id(s: &AppState, req: &Request) -> String {
    let given = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(v) => v.to_owned(),
        None => {
            let n = s.seq.fetch_add(1, Ordering::Relaxed);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            format!("{t:x}-{n:x}")
        }
    }
}

struct Prepared {
    pixels: Vec<u8>,
    /// Which of the model's input sizes the pixels are at.
    canvas: usize,
    sizes: crate::engine::ImageSizes,
    decode: Duration,
    resize: Duration,
}

async fn detect(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let id = request_id(&s, &req);
    let mut resp = match detect_inner(&s, req, id.clone()).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Decodes (EXIF, pixel limit) and resizes each image to one of the model's input sizes (the
/// one it is shrunk least in, when there are several) on the blocking pool, concurrently; a
/// bad image's error names its index when there are several.
async fn prepare(
    images: Vec<Bytes>,
    input_sizes: &[[u32; 2]],
    (resize, limits): (codetr_model::Resize, Option<[u32; 2]>),
    max_pixels: u64,
) -> Result<Vec<Prepared>> {
    let n = images.len();
    let tasks: Vec<_> = images
        .into_iter()
        .map(|bytes| {
            let input_sizes = input_sizes.to_vec();
            tokio::task::spawn_blocking(move || -> Result<Prepared> {
                let t = Instant::now();
                let img = decode::decode(&bytes, max_pixels);
                let decode_t = t.elapsed();
                metrics::histogram!(m::DECODE_DURATION).record(decode_t.as_secs_f64());
                let img = img.inspect_err(|_| {
                    metrics::counter!(m::IMAGES_DECODED, "outcome" => "error").increment(1);
                })?;
                metrics::counter!(m::IMAGES_DECODED, "outcome" => "ok").increment(1);
                let t = Instant::now();
                let canvas = codetr_model::preprocess::pick_canvas(
                    [img.height, img.width],
                    &input_sizes,
                    limits,
                );
                let [h, w] = input_sizes
                    .get(canvas)
                    .copied()
                    .ok_or_else(|| ServeError::Internal("the model has no input size".into()))?;
                let (pixels, valid) = RESIZER
                    .with(|r| decode::resize(&img, w, h, resize, limits, &mut r.borrow_mut()))?;
                Ok(Prepared {
                    pixels,
                    canvas,
                    sizes: crate::engine::ImageSizes {
                        orig: [img.height, img.width],
                        valid,
                    },
                    decode: decode_t,
                    resize: t.elapsed(),
                })
            })
        })
        .collect();
    let mut prepared = Vec::with_capacity(n);
    for (i, t) in tasks.into_iter().enumerate() {
        let p = t
            .await
            .map_err(|e| ServeError::Internal(format!("decode task: {e}")))?
            .map_err(|e| match e {
                ServeError::InvalidImage(m) if n > 1 => {
                    ServeError::InvalidImage(format!("image {i}: {m}"))
                }
                other => other,
            })?;
        prepared.push(p);
    }

    Ok(prepared)
}

/// Queues one job per prepared image (its pixels moved out) and awaits every output before
/// `deadline`.
async fn infer(
    e: &Engine,
    prepared: &mut [Prepared],
    now: Instant,
    deadline: Instant,
    timeout_ms: u64,
) -> Result<Vec<JobOutput>> {
    let n = prepared.len();
    let mut jobs = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(n);
    for p in prepared.iter_mut() {
        let (tx, rx) = oneshot::channel();
        jobs.push(Job {
            pixels: std::mem::take(&mut p.pixels),
            canvas: p.canvas,
            sizes: p.sizes,
            enqueued: now,
            deadline,
            timeout_ms,
            reply: tx,
        });
        replies.push(rx);
    }
    e.batcher.submit(jobs)?;
    let mut outs: Vec<JobOutput> = Vec::with_capacity(n);
    for rx in replies {
        let out = tokio::time::timeout_at(deadline.into(), rx)
            .await
            .map_err(|_| ServeError::DeadlineExceeded(timeout_ms))?
            .map_err(|_| {
                ServeError::Internal("the inference worker dropped the request".into())
            })??;
        outs.push(out);
    }

    Ok(outs)
}

async fn detect_inner(
    s: &Arc<AppState>,
    req: Request,
    request_id: String,
) -> Result<DetectResponse> {
    let t0 = Instant::now();
    if s.draining.load(Ordering::Relaxed) {
        return Err(ServeError::Unavailable("shutting down".into()));
    }
    let e = s.engine()?;
    if !s.ready.load(Ordering::Relaxed) {
        return Err(ServeError::Unavailable(
            "the model is still warming up".into(),
        ));
    }
    let limits = &s.config.limits;
    let parsed = request::parse(req, limits.max_body_bytes).await?;
    metrics::counter!(m::BYTES_IN).increment(parsed.body_bytes as u64);
    let params = resolve_params(parsed.params, &e.model, &s.config)?;
    let n = parsed.images.len();
    if n == 0 {
        return Err(ServeError::BadRequest("the request holds no image".into()));
    }
    if n > limits.max_images {
        return Err(ServeError::BadRequest(format!(
            "{n} images in one request; the limit is {}",
            limits.max_images
        )));
    }
    let deadline = t0 + Duration::from_millis(params.timeout_ms);

    let mut prepared = prepare(
        parsed.images,
        &e.model.input_sizes,
        (e.model.meta.resize, e.model.meta.letterbox_limits),
        limits.max_pixels,
    )
    .await?;

    let now = Instant::now();
    if now >= deadline {
        return Err(ServeError::DeadlineExceeded(params.timeout_ms));
    }

    let outs = infer(e, &mut prepared, now, deadline, params.timeout_ms).await?;

    let names = &e.model.meta.classes;
    let images = outs
        .iter()
        .zip(&prepared)
        .map(|(o, p)| ImageResult {
            width: p.sizes.orig[1],
            height: p.sizes.orig[0],
            detections: filter::keep(
                &o.labels,
                &o.scores,
                &o.boxes,
                params.score_threshold,
                params.classes.as_ref(),
                params.max_detections,
            )
            .map(|k| Detection {
                class_id: k.class_id,
                label: filter::class_name(names, k.class_id),
                score: k.score,
                bbox: BoxXyxy {
                    x1: k.bbox[0],
                    y1: k.bbox[1],
                    x2: k.bbox[2],
                    y2: k.bbox[3],
                },
            })
            .collect(),
        })
        .collect();
    let max = |f: &dyn Fn(usize) -> Duration| (0..n).map(f).max().unwrap_or_default();
    Ok(DetectResponse {
        request_id,
        model: ModelRef {
            name: e.model.name.clone(),
            version: e.model.version.clone(),
            provider: e.provider.as_str(),
        },
        images,
        timings_ms: Timings {
            queue: ms(max(&|i| outs[i].queue)),
            decode: ms(max(&|i| prepared[i].decode)),
            preprocess: ms(max(&|i| prepared[i].resize)),
            infer: ms(max(&|i| outs[i].infer)),
            total: ms(t0.elapsed()),
        },
    })
}

thread_local! {
    /// fast_image_resize keeps scratch buffers in its resizer; one per blocking thread.
    static RESIZER: std::cell::RefCell<fast_image_resize::Resizer> =
        std::cell::RefCell::new(fast_image_resize::Resizer::new());
}
