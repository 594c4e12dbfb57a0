//! The dynamic batcher between HTTP handlers and the sessions (Triton's semantics).
//!
//! Handlers submit one [`Job`] per image into a bounded queue (full → 503). Each worker thread
//! owns one [`Runner`] (ort's `Session::run` takes `&mut self`, so no lock on the hot path) and
//! loops: block for a first job, gather more until `max_batch_size` or until the first job has
//! waited `max_queue_delay`, drop jobs whose deadline passed (answered 504) or whose client
//! left, pad the batch to the next configured size, run, answer each job.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use crate::engine::Runner;
use crate::error::{Result, ServeError};
use crate::metrics as m;

/// One image waiting for inference.
pub struct Job {
    /// `[H, W, 3]` RGB8 at the graph's input size.
    pub pixels: Vec<u8>,
    /// Original `(height, width)`: the graph scales boxes to it.
    pub orig: [u32; 2],
    /// When the job entered the queue.
    pub enqueued: Instant,
    /// Past this the job is not run; it is answered [`ServeError::DeadlineExceeded`].
    pub deadline: Instant,
    /// The request's deadline in ms, for the error message.
    pub timeout_ms: u64,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<JobOutput>>,
}

/// One image's detections, all `k` of them (filtering is the handler's job).
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// Class indices, `k`.
    pub labels: Vec<i64>,
    /// Scores, `k`, descending.
    pub scores: Vec<f32>,
    /// xyxy boxes in original pixels, `k`.
    pub boxes: Vec<[f32; 4]>,
    /// Time spent in the queue.
    pub queue: Duration,
    /// Time the batch's inference took.
    pub infer: Duration,
    /// Real images in the batch this job ran in.
    pub batch_size: usize,
}

/// Batching parameters the workers use.
#[derive(Debug, Clone)]
pub struct BatchPolicy {
    /// Batch sizes the graph runs at, ascending; the last is the largest batch.
    pub sizes: Vec<usize>,
    /// Longest wait of a batch's first job for more jobs.
    pub max_queue_delay: Duration,
    /// `[H, W]` of the graph input.
    pub input_hw: [u32; 2],
}

impl BatchPolicy {
    fn max_batch(&self) -> usize {
        self.sizes.last().copied().unwrap_or(1)
    }

    /// The size a batch of `n` real images is padded to.
    pub fn padded(&self, n: usize) -> usize {
        self.sizes.iter().copied().find(|&s| s >= n).unwrap_or(n)
    }
}

/// The handlers' side of the queue. Dropping it (after the HTTP server has drained) lets the
/// workers finish what is queued and exit.
#[derive(Clone)]
pub struct Batcher {
    tx: Sender<Job>,
    capacity: usize,
}

/// Started workers: join them after the [`Batcher`] is dropped.
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Waits for every worker to finish its queue and exit.
    pub fn join(self) {
        for h in self.handles {
            if h.join().is_err() {
                tracing::error!("an inference worker panicked");
            }
        }
    }
}

/// Starts one worker thread per runner. Each first warms up at every batch size and reports
/// the outcome on `warmed` (the server is ready once all have).
pub fn start(
    runners: Vec<Runner>,
    policy: BatchPolicy,
    capacity: usize,
    warmed: std::sync::mpsc::Sender<Result<usize>>,
) -> Result<(Batcher, Workers)> {
    let (tx, rx) = crossbeam_channel::bounded::<Job>(capacity);
    let mut handles = Vec::new();
    for (i, runner) in runners.into_iter().enumerate() {
        let rx = rx.clone();
        let policy = policy.clone();
        let warmed = warmed.clone();
        let h = std::thread::Builder::new()
            .name(format!("infer-{i}"))
            .spawn(move || worker(i, runner, rx, policy, warmed))
            .map_err(|e| ServeError::Io(format!("cannot start inference thread: {e}")))?;
        handles.push(h);
    }
    Ok((Batcher { tx, capacity }, Workers { handles }))
}

impl Batcher {
    /// Admits all of `jobs` or none: when the queue cannot take them all, nothing is queued
    /// and the caller answers 503.
    pub fn submit(&self, jobs: Vec<Job>) -> Result<()> {
        let waiting = self.tx.len();
        if waiting + jobs.len() > self.capacity {
            metrics::counter!(m::REJECTED, "reason" => "queue_full").increment(1);
            return Err(ServeError::QueueFull(waiting));
        }
        for job in jobs {
            match self.tx.try_send(job) {
                Ok(()) => metrics::gauge!(m::QUEUE_DEPTH).set(self.tx.len() as f64),
                // Another handler won the race for the last slots; the jobs already queued
                // still run, their answers go nowhere.
                Err(TrySendError::Full(_)) => {
                    metrics::counter!(m::REJECTED, "reason" => "queue_full").increment(1);
                    return Err(ServeError::QueueFull(self.tx.len()));
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(ServeError::Unavailable(
                        "the server is shutting down".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Images waiting.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }
}

fn worker(
    index: usize,
    mut runner: Runner,
    rx: Receiver<Job>,
    policy: BatchPolicy,
    warmed: std::sync::mpsc::Sender<Result<usize>>,
) {
    let [h, w] = policy.input_hw;
    let per = h as usize * w as usize * 3;
    // Warm-up: every batch size once, so the first real request at any size does not pay for
    // kernel selection (CPU/CUDA) or an engine build (TensorRT).
    for &n in &policy.sizes {
        let t = Instant::now();
        if let Err(e) = runner.run(n, vec![0; n * per], &vec![[h, w]; n]) {
            let _ = warmed.send(Err(ServeError::Runtime(format!(
                "warm-up of worker {index} at batch {n} failed: {e}"
            ))));
            return;
        }
        tracing::info!(
            worker = index,
            batch = n,
            ms = t.elapsed().as_millis() as u64,
            "warmed up"
        );
    }
    let _ = warmed.send(Ok(index));
    drop(warmed);

    let take = |job: Job| {
        metrics::gauge!(m::QUEUE_DEPTH).set(rx.len() as f64);
        job
    };
    let max = policy.max_batch();
    while let Ok(first) = rx.recv() {
        let until = first.enqueued + policy.max_queue_delay;
        let mut batch = vec![take(first)];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(j) => {
                    batch.push(take(j));
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            if Instant::now() >= until {
                break;
            }
            match rx.recv_deadline(until) {
                Ok(j) => batch.push(take(j)),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let (expired, live): (Vec<Job>, Vec<Job>) =
            batch.into_iter().partition(|j| j.deadline <= now);
        for j in expired {
            metrics::counter!(m::REJECTED, "reason" => "deadline").increment(1);
            let _ = j
                .reply
                .send(Err(ServeError::DeadlineExceeded(j.timeout_ms)));
        }
        // Clients that went away (their handler timed out or the connection closed).
        let (gone, live): (Vec<Job>, Vec<Job>) =
            live.into_iter().partition(|j| j.reply.is_closed());
        if !gone.is_empty() {
            metrics::counter!(m::REJECTED, "reason" => "cancelled").increment(gone.len() as u64);
        }
        if live.is_empty() {
            continue;
        }
        run_batch(&mut runner, &policy, per, live, now);
    }
    tracing::info!(worker = index, "inference worker stopped");
}

fn run_batch(runner: &mut Runner, policy: &BatchPolicy, per: usize, jobs: Vec<Job>, now: Instant) {
    let n = jobs.len();
    let padded = policy.padded(n);
    let mut pixels = Vec::with_capacity(padded * per);
    let mut orig = Vec::with_capacity(padded);
    for j in &jobs {
        pixels.extend_from_slice(&j.pixels);
        orig.push(j.orig);
        metrics::histogram!(m::QUEUE_WAIT).record(now.duration_since(j.enqueued).as_secs_f64());
    }
    // Padding rows are black images of the input size; their outputs are discarded.
    pixels.resize(padded * per, 0);
    orig.resize(padded, policy.input_hw);
    let t = Instant::now();
    let result = runner.run(padded, pixels, &orig);
    let infer = t.elapsed();
    metrics::histogram!(m::INFER_DURATION).record(infer.as_secs_f64());
    metrics::histogram!(m::BATCH_SIZE).record(n as f64);
    metrics::counter!(m::EXECUTIONS).increment(1);
    metrics::counter!(m::INFERENCES).increment(n as u64);
    match result {
        Ok(out) => {
            let k = out.k;
            for (i, j) in jobs.into_iter().enumerate() {
                let boxes = out.boxes[i * k * 4..(i + 1) * k * 4]
                    .chunks_exact(4)
                    .map(|b| [b[0], b[1], b[2], b[3]])
                    .collect();
                let _ = j.reply.send(Ok(JobOutput {
                    labels: out.labels[i * k..(i + 1) * k].to_vec(),
                    scores: out.scores[i * k..(i + 1) * k].to_vec(),
                    boxes,
                    queue: now.duration_since(j.enqueued),
                    infer,
                    batch_size: n,
                }));
            }
        }
        Err(e) => {
            tracing::error!("inference failed for a batch of {n}: {e}");
            metrics::counter!(m::INFER_FAILURES).increment(1);
            for j in jobs {
                let _ = j.reply.send(Err(ServeError::Internal(e.to_string())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_goes_to_the_next_configured_size() {
        let p = BatchPolicy {
            sizes: vec![1, 2, 4, 8],
            max_queue_delay: Duration::ZERO,
            input_hw: [2, 2],
        };
        assert_eq!(
            (1..=8).map(|n| p.padded(n)).collect::<Vec<_>>(),
            vec![1, 2, 4, 4, 8, 8, 8, 8]
        );
    }
}
