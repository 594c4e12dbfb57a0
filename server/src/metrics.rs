//! Prometheus metrics: names in one place, the recorder, and the per-request middleware.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds` histograms). The
//! inference/execution pair mirrors Triton's: `inferences` counts images, `executions` counts
//! session runs, so `inferences / executions` is the mean batch size.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::{Result, ServeError};

/// Counter: HTTP requests by `route`, `method`, `status`.
pub const REQUESTS: &str = "codetr_http_requests_total";
/// Histogram: HTTP request duration by `route`.
pub const REQUEST_DURATION: &str = "codetr_http_request_duration_seconds";
/// Counter: request body bytes received on `/v1/detect`.
pub const BYTES_IN: &str = "codetr_request_bytes_total";
/// Counter: images decoded, by `outcome` (`ok` | `error`).
pub const IMAGES_DECODED: &str = "codetr_images_decoded_total";
/// Histogram: decode + resize time per image.
pub const DECODE_DURATION: &str = "codetr_decode_duration_seconds";
/// Histogram: time an image waited in the batcher's queue.
pub const QUEUE_WAIT: &str = "codetr_queue_wait_seconds";
/// Gauge: images waiting in the queue.
pub const QUEUE_DEPTH: &str = "codetr_queue_depth";
/// Histogram: duration of one session run (one batch).
pub const INFER_DURATION: &str = "codetr_inference_duration_seconds";
/// Histogram: real images per batch (before padding).
pub const BATCH_SIZE: &str = "codetr_batch_size";
/// Counter: images run through the graph.
pub const INFERENCES: &str = "codetr_inference_count_total";
/// Counter: images run through the graph, by `input_size` (`HxW`: which of the served input
/// sizes, e.g. landscape or portrait, each went to).
pub const IMAGES_BY_INPUT: &str = "codetr_images_by_input_size_total";
/// Counter: session runs (batches).
pub const EXECUTIONS: &str = "codetr_execution_count_total";
/// Counter: batches whose run failed.
pub const INFER_FAILURES: &str = "codetr_inference_failures_total";
/// Counter: images refused or dropped by the batcher, by `reason` (`queue_full` | `deadline` |
/// `cancelled`: the client left before its batch ran).
pub const REJECTED: &str = "codetr_rejected_total";
/// Gauge: 1 for the provider in use (`provider`), with the requested list (`requested`).
pub const PROVIDER_INFO: &str = "codetr_provider_info";
/// Gauge: 1 once the model is loaded and warmed at every batch size.
pub const READY: &str = "codetr_ready";
/// Gauge: the largest batch the workers run (the configured one unless a larger size failed
/// at warm-up).
pub const MAX_BATCH: &str = "codetr_max_batch_size";
/// Counter: batch sizes that failed at warm-up and were dropped, by `batch`.
pub const WARMUP_FAILURES: &str = "codetr_warmup_failures_total";
/// Gauge: bytes of host memory the workers stage batches in, by `memory` (`cuda-pinned` |
/// `cpu`): pinned memory is page-locked, a resource the whole machine shares.
pub const STAGING_BYTES: &str = "codetr_staging_bytes";

/// Installs the process-wide recorder and returns the handle `/metrics` renders.
pub fn install(max_batch: usize) -> Result<PrometheusHandle> {
    let secs = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let mut sizes: Vec<f64> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
        .take_while(|&n| n < max_batch)
        .map(|n| n as f64)
        .collect();
    sizes.push(max_batch as f64);
    let e =
        |e: metrics_exporter_prometheus::BuildError| ServeError::Config(format!("metrics: {e}"));
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &secs)
        .map_err(e)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &sizes)
        .map_err(e)?
        .install_recorder()
        .map_err(e)?;
    // Histograms are drained into their buckets on upkeep; do it now and then so a rarely
    // scraped server does not accumulate samples.
    let h = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            h.run_upkeep();
        }
    });
    Ok(handle)
}

/// Middleware: counts every request by matched route and status, and times it.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let t = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "route" => route).record(t.elapsed().as_secs_f64());
    resp
}
