//! Driving one load level: closed loop (N clients, each sends its next request when the last
//! answer arrives) or open loop (requests start on a fixed schedule whatever the server does;
//! latency counts from the scheduled start, so queueing in the client is not hidden).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::Uri;
use tokio::time::Instant;

use crate::client::{Http, Outcome, Payload};
use crate::scrape::ServerSplit;

/// What one level does.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Level {
    /// Fixed number of clients in flight.
    Closed {
        /// Clients.
        concurrency: usize,
    },
    /// Fixed arrival rate.
    Open {
        /// Requests per second.
        rate: f64,
    },
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Level::Closed { concurrency } => write!(f, "c={concurrency}"),
            Level::Open { rate } => write!(f, "r={rate}/s"),
        }
    }
}

/// Bounds of one level.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Unrecorded traffic before measuring.
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// Stop after this many measured requests (closed loop), if set.
    pub max_requests: Option<u64>,
}

/// Percentiles in ms.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The result of one level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LevelResult {
    /// Which target ("a" = --url, "b" = --compare).
    pub target: String,
    /// The level.
    pub level: Level,
    /// Measured window, s.
    pub seconds: f64,
    /// Requests answered 2xx in the window.
    pub ok: u64,
    /// Other outcomes by status (or `timeout`, `transport`, `client_overload`).
    pub errors: BTreeMap<String, u64>,
    /// 2xx answers per second.
    pub throughput: f64,
    /// Latency of 2xx answers.
    pub latency_ms: Latency,
    /// The server's own split, when it exposes codetr-serve's metrics.
    pub server: Option<ServerSplit>,
}

/// Outcomes of one or more measured windows; merge rounds, then [`Tally::finish`].
pub struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    /// Empty.
    pub fn new() -> Self {
        Self {
            // 1 µs .. 10 min, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Status(s) if (200..300).contains(&s) => {
                self.ok += 1;
                let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
                let _ = self.hist.record(us);
            }
            Outcome::Status(s) => *self.errors.entry(s.to_string()).or_default() += 1,
            Outcome::Timeout => *self.errors.entry("timeout".into()).or_default() += 1,
            Outcome::Transport => *self.errors.entry("transport".into()).or_default() += 1,
        }
    }

    /// Adds another window's outcomes.
    pub fn merge(&mut self, other: Tally) {
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// Percentiles and throughput over `seconds` of measured time.
    pub fn finish(self, target: &str, level: Level, seconds: f64) -> LevelResult {
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / 1e3;
        let latency = if self.ok == 0 {
            Latency::default()
        } else {
            Latency {
                p50: q(0.5),
                p90: q(0.9),
                p95: q(0.95),
                p99: q(0.99),
                max: self.hist.max() as f64 / 1e3,
                mean: self.hist.mean() / 1e3,
            }
        };
        LevelResult {
            target: target.to_owned(),
            level,
            seconds,
            ok: self.ok,
            errors: self.errors,
            throughput: self.ok as f64 / seconds.max(1e-9),
            latency_ms: latency,
            server: None,
        }
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs one measured window of `level` against `uri`, cycling through `payloads`; returns
/// its outcomes and the measured seconds.
pub async fn run_window(
    http: &Http,
    uri: &Uri,
    payloads: Arc<Vec<Payload>>,
    level: Level,
    bounds: Bounds,
) -> (Tally, f64) {
    match level {
        Level::Closed { concurrency } => closed(http, uri, payloads, concurrency, bounds).await,
        Level::Open { rate } => open(http, uri, payloads, rate, bounds).await,
    }
}

async fn closed(
    http: &Http,
    uri: &Uri,
    payloads: Arc<Vec<Payload>>,
    concurrency: usize,
    b: Bounds,
) -> (Tally, f64) {
    let start = Instant::now() + b.warmup;
    let end = start + b.duration;
    let next = Arc::new(AtomicUsize::new(0));
    let measured = Arc::new(AtomicUsize::new(0));
    let cap = b.max_requests.map(|m| m as usize);
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (http, uri, payloads, next, measured) = (
            http.clone(),
            uri.clone(),
            payloads.clone(),
            next.clone(),
            measured.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end || cap.is_some_and(|c| measured.load(Ordering::Relaxed) >= c) {
                    break;
                }
                let p = &payloads[next.fetch_add(1, Ordering::Relaxed) % payloads.len()];
                let out = http.post(&uri, p).await;
                let t1 = Instant::now();
                // Only requests that started and finished inside the window count.
                if t0 >= start && t1 <= end {
                    measured.fetch_add(1, Ordering::Relaxed);
                    t.record(out, t1 - t0);
                }
            }
            t
        }));
    }
    let mut total = Tally::new();
    for task in tasks {
        if let Ok(t) = task.await {
            total.merge(t);
        }
    }
    (total, (Instant::now().min(end) - start).as_secs_f64())
}

/// Most requests in flight in open loop; beyond it the generator itself is the bottleneck
/// and further arrivals are counted as `client_overload` instead of silently delayed.
const MAX_OUTSTANDING: usize = 4096;

async fn open(
    http: &Http,
    uri: &Uri,
    payloads: Arc<Vec<Payload>>,
    rate: f64,
    b: Bounds,
) -> (Tally, f64) {
    let t0 = Instant::now();
    let start = t0 + b.warmup;
    let end = start + b.duration;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-6));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut overload = 0u64;
    let mut i: u64 = 0;
    loop {
        let intended = t0 + interval.mul_f64(i as f64);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(intended).await;
        let in_window = intended >= start;
        if outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
            if in_window {
                overload += 1;
            }
            i += 1;
            continue;
        }
        outstanding.fetch_add(1, Ordering::Relaxed);
        let (http, uri, outstanding) = (http.clone(), uri.clone(), outstanding.clone());
        let p = payloads[i as usize % payloads.len()].clone();
        tasks.push(tokio::spawn(async move {
            let out = http.post(&uri, &p).await;
            outstanding.fetch_sub(1, Ordering::Relaxed);
            // Latency from the scheduled start: coordinated-omission corrected.
            (in_window, out, Instant::now() - intended)
        }));
        i += 1;
    }
    let mut total = Tally::new();
    for task in tasks {
        if let Ok((true, out, lat)) = task.await {
            total.record(out, lat);
        }
    }
    if overload > 0 {
        total.errors.insert("client_overload".into(), overload);
    }
    (total, b.duration.as_secs_f64())
}
