//! The dynamic batcher between HTTP handlers and the sessions (Triton's semantics).
//!
//! Handlers submit one [`Job`] per image into a bounded queue (full → 503): one queue per input
//! size, since a batch is one tensor (a dynamic-size letterbox graph may be served at a
//! landscape and a portrait size). Each worker thread owns one [`Runner`] (ort's `Session::run`
//! takes `&mut self`, so no lock on the hot path) and loops: block for a first job from any
//! queue (a ready queue is picked at random, so none starves), gather more of that queue's until
//! `max_batch_size` or until the first job has waited `max_queue_delay`, drop jobs whose
//! deadline passed (answered 504) or whose client left, pad the batch to the next configured
//! size, run, answer each job.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use crate::engine::{BatchOutput, ImageSizes, Infer};
use crate::error::{Result, ServeError};
use crate::metrics as m;

/// One image waiting for inference.
pub struct Job {
    /// `[H, W, 3]` RGB8 at the input size `input_sizes[canvas]`.
    pub pixels: Vec<u8>,
    /// Which of the policy's `input_sizes` the pixels are at.
    pub canvas: usize,
    /// Original and valid size (the graph scales boxes to the original).
    pub sizes: ImageSizes,
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
    /// The `[H, W]` inputs served, one queue each (never empty).
    pub input_sizes: Vec<[u32; 2]>,
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
    /// One queue per input size.
    txs: Vec<Sender<Job>>,
    /// Images all queues together admit.
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

/// A batch size that failed at warm-up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WarmupFailure {
    /// The worker.
    pub worker: usize,
    /// The batch size.
    pub batch: usize,
    /// The input size `[H, W]` it failed at.
    pub input_size: [u32; 2],
    /// ONNX Runtime's error.
    pub error: String,
}

/// How a worker's warm-up went: the batch sizes it serves, and the size that failed if any.
#[derive(Debug, Clone)]
pub struct Warmed {
    /// The worker.
    pub worker: usize,
    /// Batch sizes it runs at: the configured ones below the first that failed.
    pub sizes: Vec<usize>,
    /// The first size that failed (out of memory, a kernel error); larger ones are not tried.
    pub failure: Option<WarmupFailure>,
}

/// Starts one worker thread per runner. Each first warms up at every batch size, keeping the
/// sizes below the first that fails, and reports the outcome on `warmed` (the server is ready
/// once all have).
pub fn start<R: Infer>(
    runners: Vec<R>,
    policy: BatchPolicy,
    capacity: usize,
    warmed: std::sync::mpsc::Sender<Result<Warmed>>,
) -> Result<(Batcher, Workers)> {
    if policy.input_sizes.is_empty() {
        return Err(ServeError::Internal(
            "a batch policy with no input size".into(),
        ));
    }
    // Each queue could take all admitted images; `submit` bounds their sum.
    let (txs, rxs): (Vec<Sender<Job>>, Vec<Receiver<Job>>) = policy
        .input_sizes
        .iter()
        .map(|_| crossbeam_channel::bounded::<Job>(capacity))
        .unzip();
    let mut handles = Vec::new();
    for (i, runner) in runners.into_iter().enumerate() {
        let rxs = rxs.clone();
        let policy = policy.clone();
        let warmed = warmed.clone();
        let h = std::thread::Builder::new()
            .name(format!("infer-{i}"))
            .spawn(move || worker(i, runner, rxs, policy, warmed))
            .map_err(|e| ServeError::Io(format!("cannot start inference thread: {e}")))?;
        handles.push(h);
    }
    Ok((Batcher { txs, capacity }, Workers { handles }))
}

impl Batcher {
    /// Admits all of `jobs` or none: when the queue cannot take them all, nothing is queued
    /// and the caller answers 503.
    pub fn submit(&self, jobs: Vec<Job>) -> Result<()> {
        if let Some(j) = jobs.iter().find(|j| j.canvas >= self.txs.len()) {
            return Err(ServeError::Internal(format!(
                "a job for input size {} of {}",
                j.canvas,
                self.txs.len()
            )));
        }
        let waiting = self.depth();
        if waiting + jobs.len() > self.capacity {
            metrics::counter!(m::REJECTED, "reason" => "queue_full").increment(1);
            return Err(ServeError::QueueFull(waiting));
        }
        for job in jobs {
            // Another handler may have won the race for the last slots; the jobs already
            // queued still run, their answers go nowhere.
            if self.depth() >= self.capacity {
                metrics::counter!(m::REJECTED, "reason" => "queue_full").increment(1);
                return Err(ServeError::QueueFull(self.depth()));
            }
            match self.txs[job.canvas].try_send(job) {
                Ok(()) => metrics::gauge!(m::QUEUE_DEPTH).set(self.depth() as f64),
                Err(TrySendError::Full(_)) => {
                    metrics::counter!(m::REJECTED, "reason" => "queue_full").increment(1);
                    return Err(ServeError::QueueFull(self.depth()));
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

    /// Images waiting, all input sizes together.
    pub fn depth(&self) -> usize {
        self.txs.iter().map(Sender::len).sum()
    }
}

/// Runs one black image at input size `hw`. If that fails through I/O binding and succeeds
/// once the runner is unbound, the runner stays unbound and the binding's error is returned:
/// a provider that mishandles bindings costs a loud warning, not the server. Otherwise (the
/// run works, the runner was not bound, or it fails either way, which warm-up then reports)
/// `None`.
pub fn check_binding<R: Infer>(runner: &mut R, hw: [u32; 2]) -> Option<ServeError> {
    let bound = run_black(runner, hw, 1).err()?;
    if !runner.unbind() {
        return None;
    }
    run_black(runner, hw, 1).ok().map(|_| bound)
}

/// Runs `n` black images filling the input size `hw`. The first call at a shape also
/// allocates its staging buffers, so a shape whose buffers cannot be had fails here (at
/// warm-up), not on the hot path.
fn run_black<R: Infer>(runner: &mut R, hw: [u32; 2], n: usize) -> Result<BatchOutput> {
    runner.input(hw, n)?.fill(0);
    runner.infer(hw, n, &vec![ImageSizes::full(hw); n])
}

/// Runs every batch size of `policy` once at every input size, ascending, so that the first
/// real request at any shape pays for no kernel selection (CPU/CUDA) or engine build
/// (TensorRT). A size that fails (a GPU out of memory, a kernel's launch limits) ends the
/// warm-up: the worker serves the sizes below it, once a re-run of the largest of them at that
/// input size shows the session still works. Only a failure at the smallest size is fatal.
pub fn warm_up<R: Infer>(index: usize, runner: &mut R, policy: &mut BatchPolicy) -> Result<Warmed> {
    let sizes = policy.sizes.clone();
    let run = run_black::<R>;
    for (i, &n) in sizes.iter().enumerate() {
        for &hw in &policy.input_sizes {
            let [h, w] = hw;
            let t = Instant::now();
            let e = match run(runner, hw, n) {
                Ok(_) => {
                    tracing::info!(
                        worker = index,
                        batch = n,
                        input = %format!("{h}x{w}"),
                        ms = t.elapsed().as_millis() as u64,
                        "warmed up"
                    );
                    continue;
                }
                Err(e) => e,
            };
            if i == 0 {
                return Err(ServeError::Runtime(format!(
                    "warm-up of worker {index} at batch {n} ({h}x{w}) failed: {e}"
                )));
            }
            let largest = sizes[i - 1];
            tracing::error!(
                worker = index,
                batch = n,
                "BATCH SIZE DROPPED: warm-up at batch {n} ({h}x{w}) failed ({e}); serving \
                 batches up to {largest}"
            );
            run(runner, hw, largest).map_err(|e2| {
                ServeError::Runtime(format!(
                    "warm-up of worker {index}: batch {n} ({h}x{w}) failed ({e}) and batch \
                     {largest}, which had run, fails after it: {e2}"
                ))
            })?;
            policy.sizes.truncate(i);
            metrics::counter!(m::WARMUP_FAILURES, "batch" => n.to_string()).increment(1);
            return Ok(Warmed {
                worker: index,
                sizes: policy.sizes.clone(),
                failure: Some(WarmupFailure {
                    worker: index,
                    batch: n,
                    input_size: hw,
                    error: e.to_string(),
                }),
            });
        }
    }
    Ok(Warmed {
        worker: index,
        sizes,
        failure: None,
    })
}

fn worker<R: Infer>(
    index: usize,
    mut runner: R,
    rxs: Vec<Receiver<Job>>,
    mut policy: BatchPolicy,
    warmed: std::sync::mpsc::Sender<Result<Warmed>>,
) {
    match warm_up(index, &mut runner, &mut policy) {
        Ok(report) => {
            let _ = warmed.send(Ok(report));
        }
        Err(e) => {
            let _ = warmed.send(Err(e));
            return;
        }
    }
    drop(warmed);

    let take = |job: Job| {
        metrics::gauge!(m::QUEUE_DEPTH).set(rxs.iter().map(Receiver::len).sum::<usize>() as f64);
        job
    };
    let max = policy.max_batch();
    let mut select = Select::new();
    for rx in &rxs {
        select.recv(rx);
    }
    // A queue leaves the selection once it is closed and empty; the worker stops after all.
    let mut open = rxs.len();
    while open > 0 {
        let op = select.select();
        let canvas = op.index();
        let rx = &rxs[canvas];
        let Ok(first) = op.recv(rx) else {
            select.remove(canvas);
            open -= 1;
            continue;
        };
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
        run_batch(&mut runner, &policy, canvas, live, now);
    }
    tracing::info!(worker = index, "inference worker stopped");
}

/// Runs `jobs`, all at input size `policy.input_sizes[canvas]`, as one padded batch.
fn run_batch<R: Infer>(
    runner: &mut R,
    policy: &BatchPolicy,
    canvas: usize,
    jobs: Vec<Job>,
    now: Instant,
) {
    let hw = policy.input_sizes[canvas];
    let per = hw[0] as usize * hw[1] as usize * 3;
    // A job at another size is the caller's bug; it fails alone instead of sinking the batch.
    let (jobs, wrong): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.pixels.len() == per);
    for j in wrong {
        let e = format!(
            "{} pixel bytes for input size {hw:?} ({per})",
            j.pixels.len()
        );
        tracing::error!("{e}");
        let _ = j.reply.send(Err(ServeError::Internal(e)));
    }
    let n = jobs.len();
    if n == 0 {
        return;
    }
    let padded = policy.padded(n);
    let mut sizes = Vec::with_capacity(padded);
    for j in &jobs {
        sizes.push(j.sizes);
        metrics::histogram!(m::QUEUE_WAIT).record(now.duration_since(j.enqueued).as_secs_f64());
    }
    sizes.resize(padded, ImageSizes::full(hw));
    metrics::counter!(m::IMAGES_BY_INPUT, "input_size" => format!("{}x{}", hw[0], hw[1]))
        .increment(n as u64);
    // Images go straight into the session's staging buffer; padding rows are black images of
    // the input size, their outputs discarded.
    let staged = runner.input(hw, padded).and_then(|buf| {
        if buf.len() != padded * per {
            return Err(ServeError::Internal(format!(
                "staging buffer of {} bytes for {padded} images of {per}",
                buf.len()
            )));
        }
        let (rows, pad) = buf.split_at_mut(n * per);
        for (row, j) in rows.chunks_exact_mut(per).zip(&jobs) {
            row.copy_from_slice(&j.pixels);
        }
        pad.fill(0);
        Ok(())
    });
    // The session run alone (with I/O binding, the transfer to the device included): the
    // copy into the staging buffer above is the batcher's, not the runtime's.
    let t = Instant::now();
    let result = staged.and_then(|()| runner.infer(hw, padded, &sizes));
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

    /// A session that fails above `fail_above` images (like CUDA out of memory) — at every
    /// input size, or only at `fail_input` — and, with `broken_after_failure`, at every size
    /// once it has failed (a sticky GPU error). It checks each batch's pixel count against its
    /// input size and answers label `H` for every image, so a reply shows the size it ran at.
    struct Faulty {
        fail_above: usize,
        fail_input: Option<[u32; 2]>,
        broken_after_failure: bool,
        failed: bool,
        runs: Vec<usize>,
        inputs: Vec<[u32; 2]>,
        /// The staging buffer, handed out filled with 1s so a byte left unwritten shows.
        pixels: Vec<u8>,
        shape: Option<(usize, [u32; 2])>,
    }

    impl Infer for Faulty {
        fn input(&mut self, hw: [u32; 2], n: usize) -> Result<&mut [u8]> {
            self.pixels = vec![1; n * hw[0] as usize * hw[1] as usize * 3];
            self.shape = Some((n, hw));
            Ok(&mut self.pixels)
        }

        fn infer(&mut self, hw: [u32; 2], n: usize, sizes: &[ImageSizes]) -> Result<BatchOutput> {
            self.runs.push(n);
            self.inputs.push(hw);
            if self.shape != Some((n, hw)) || sizes.len() != n {
                return Err(ServeError::Internal(format!(
                    "input written for {:?}, {} sizes; run for {n} at {hw:?}",
                    self.shape,
                    sizes.len()
                )));
            }
            // Every byte was written: images are zeros in these tests, so is padding.
            if self.pixels.iter().any(|&p| p != 0) {
                return Err(ServeError::Internal(
                    "a staging byte was not written".into(),
                ));
            }
            let here = self.fail_input.is_none_or(|f| f == hw);
            if (n > self.fail_above && here) || (self.failed && self.broken_after_failure) {
                self.failed = true;
                return Err(ServeError::Internal(format!(
                    "inference: CUDA failure 2: out of memory at batch {n}"
                )));
            }
            Ok(BatchOutput {
                labels: vec![i64::from(hw[0]); n],
                scores: vec![0.5; n],
                boxes: vec![0.0; n * 4],
                k: 1,
            })
        }
    }

    /// A runner whose bound runs fail (`bound_fails`) or whose every run fails (`all_fail`).
    struct Binding {
        bound: bool,
        bound_fails: bool,
        all_fail: bool,
        buf: Vec<u8>,
    }

    impl Infer for Binding {
        fn input(&mut self, hw: [u32; 2], n: usize) -> Result<&mut [u8]> {
            self.buf = vec![0; n * hw[0] as usize * hw[1] as usize * 3];
            Ok(&mut self.buf)
        }

        fn infer(&mut self, _: [u32; 2], n: usize, _: &[ImageSizes]) -> Result<BatchOutput> {
            if self.all_fail || (self.bound && self.bound_fails) {
                return Err(ServeError::Internal("inference: CUDA failure 1".into()));
            }
            Ok(BatchOutput {
                labels: vec![0; n],
                scores: vec![0.5; n],
                boxes: vec![0.0; n * 4],
                k: 1,
            })
        }

        fn unbind(&mut self) -> bool {
            std::mem::replace(&mut self.bound, false)
        }
    }

    /// A binding fault that a plain run does not have leaves the runner unbound, with the
    /// fault returned; a working runner stays bound; a runner failing either way is left to
    /// warm-up (no fault blamed on the binding); an unbound runner is not retried.
    #[test]
    fn a_binding_fault_falls_back_to_plain_runs() {
        let r = |bound, bound_fails, all_fail| Binding {
            bound,
            bound_fails,
            all_fail,
            buf: vec![],
        };
        let mut faulty = r(true, true, false);
        let e = check_binding(&mut faulty, [2, 3]).expect("the binding's fault");
        assert!(e.to_string().contains("CUDA failure"), "{e}");
        assert!(!faulty.bound);
        let mut fine = r(true, false, false);
        assert!(check_binding(&mut fine, [2, 3]).is_none() && fine.bound);
        let mut broken = r(true, false, true);
        assert!(check_binding(&mut broken, [2, 3]).is_none());
        let mut plain = r(false, false, true);
        assert!(check_binding(&mut plain, [2, 3]).is_none());
    }

    fn policy(sizes: &[usize]) -> BatchPolicy {
        BatchPolicy {
            sizes: sizes.to_vec(),
            max_queue_delay: Duration::ZERO,
            input_sizes: vec![[2, 2]],
        }
    }

    fn faulty(fail_above: usize, broken_after_failure: bool) -> Faulty {
        Faulty {
            fail_above,
            fail_input: None,
            broken_after_failure,
            failed: false,
            runs: vec![],
            inputs: vec![],
            pixels: vec![],
            shape: None,
        }
    }

    /// A job at input size `hw` (index `canvas`), and where its answer arrives.
    fn job(canvas: usize, hw: [u32; 2]) -> (Job, oneshot::Receiver<Result<JobOutput>>) {
        let (reply, wait) = oneshot::channel();
        let job = Job {
            pixels: vec![0; hw[0] as usize * hw[1] as usize * 3],
            canvas,
            sizes: ImageSizes::full(hw),
            enqueued: Instant::now(),
            deadline: Instant::now() + Duration::from_secs(10),
            timeout_ms: 10_000,
            reply,
        };
        (job, wait)
    }

    #[test]
    fn a_batch_size_that_fails_at_warm_up_is_dropped_with_the_larger_ones() {
        let mut p = policy(&[1, 2, 4, 8, 16]);
        let mut r = faulty(5, false);
        let w = warm_up(0, &mut r, &mut p).unwrap();
        assert_eq!(w.sizes, vec![1, 2, 4]);
        assert_eq!(p.sizes, vec![1, 2, 4]);
        assert_eq!(p.max_batch(), 4);
        let f = w.failure.unwrap();
        assert_eq!(f.batch, 8);
        assert!(f.error.contains("out of memory"), "{}", f.error);
        // 16 is never tried; 4 is re-run after the failure to prove the session still works.
        assert_eq!(r.runs, vec![1, 2, 4, 8, 4]);
        // Batches are now padded within what works.
        assert_eq!(p.padded(3), 4);
        assert_eq!(p.padded(4), 4);
    }

    #[test]
    fn warm_up_fails_when_the_smallest_size_or_the_session_fails() {
        let e = warm_up(1, &mut faulty(0, false), &mut policy(&[1, 2])).unwrap_err();
        assert!(e.to_string().contains("worker 1 at batch 1"), "{e}");
        let e = warm_up(0, &mut faulty(2, true), &mut policy(&[1, 2, 4])).unwrap_err();
        assert!(
            e.to_string().contains("batch 4 (2x2) failed") && e.to_string().contains("batch 2"),
            "{e}"
        );
        let w = warm_up(0, &mut faulty(100, false), &mut policy(&[1, 2, 4])).unwrap();
        assert!(w.failure.is_none() && w.sizes == vec![1, 2, 4]);
    }

    #[test]
    fn workers_report_their_warm_up_and_serve_within_it() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (batcher, workers) = start(vec![faulty(2, false)], policy(&[1, 2, 4]), 16, tx).unwrap();
        let w = rx.recv().unwrap().unwrap();
        assert_eq!(w.sizes, vec![1, 2]);
        // Three images queued at once run as batches of at most 2.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (jobs, waits): (Vec<Job>, Vec<_>) = (0..3).map(|_| job(0, [2, 2])).unzip();
        batcher.submit(jobs).unwrap();
        for wait in waits {
            let out = rt.block_on(wait).unwrap().unwrap();
            assert!(out.batch_size <= 2);
        }
        drop(batcher);
        workers.join();
    }

    #[test]
    fn padding_goes_to_the_next_configured_size() {
        let p = policy(&[1, 2, 4, 8]);
        assert_eq!(
            (1..=8).map(|n| p.padded(n)).collect::<Vec<_>>(),
            vec![1, 2, 4, 4, 8, 8, 8, 8]
        );
    }

    /// Two input sizes: warm-up runs each batch size at both; a size failing at one of them
    /// drops it for both, after the largest kept one re-ran at the failing input size.
    #[test]
    fn warm_up_covers_every_input_size() {
        let (a, b) = ([2, 3], [3, 2]);
        let mut p = policy(&[1, 2, 4]);
        p.input_sizes = vec![a, b];
        let mut r = faulty(3, false);
        r.fail_input = Some(b);
        let w = warm_up(0, &mut r, &mut p).unwrap();
        assert_eq!(w.sizes, vec![1, 2]);
        let f = w.failure.unwrap();
        assert_eq!((f.batch, f.input_size), (4, b));
        assert_eq!(r.runs, vec![1, 1, 2, 2, 4, 4, 2]);
        assert_eq!(r.inputs, vec![a, b, a, b, a, b, b]);
        let e = {
            let mut r = faulty(0, false);
            r.fail_input = Some(b);
            let mut p = policy(&[1, 2]);
            p.input_sizes = vec![a, b];
            warm_up(3, &mut r, &mut p).unwrap_err().to_string()
        };
        assert!(e.contains("worker 3 at batch 1 (3x2)"), "{e}");
    }

    /// Jobs of two input sizes, interleaved in one submit: every batch holds one size (the
    /// session checks each batch's bytes against it) and each job is answered from a run at
    /// its own size.
    #[test]
    fn a_batch_holds_one_input_size() {
        let (a, b) = ([2, 3], [5, 2]);
        let mut p = policy(&[1, 2, 4]);
        p.input_sizes = vec![a, b];
        p.max_queue_delay = Duration::from_millis(20);
        let (tx, rx) = std::sync::mpsc::channel();
        let (batcher, workers) = start(vec![faulty(100, false)], p, 16, tx).unwrap();
        assert!(rx.recv().unwrap().unwrap().failure.is_none());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let which = [0, 1, 0, 1, 1, 0, 0];
        let (jobs, waits): (Vec<Job>, Vec<_>) = which.iter().map(|&c| job(c, [a, b][c])).unzip();
        batcher.submit(jobs).unwrap();
        for (wait, &c) in waits.into_iter().zip(&which) {
            let out = rt.block_on(wait).unwrap().unwrap();
            assert_eq!(out.labels, vec![i64::from([a, b][c][0])]);
        }
        drop(batcher);
        workers.join();
    }

    /// The queues of all input sizes share one capacity; a job for an input size that is not
    /// served is an error, and nothing of its request is queued.
    #[test]
    fn the_input_size_queues_share_the_capacity() {
        let (a, b) = ([2, 3], [3, 2]);
        let mut p = policy(&[1]);
        p.input_sizes = vec![a, b];
        /// Blocks every run until the gate's sender is dropped.
        struct Gate(std::sync::mpsc::Receiver<()>, Vec<u8>);
        impl Infer for Gate {
            fn input(&mut self, _: [u32; 2], _: usize) -> Result<&mut [u8]> {
                Ok(&mut self.1)
            }

            fn infer(&mut self, _: [u32; 2], n: usize, _: &[ImageSizes]) -> Result<BatchOutput> {
                let _ = self.0.recv();
                Ok(BatchOutput {
                    labels: vec![0; n],
                    scores: vec![0.5; n],
                    boxes: vec![0.0; n * 4],
                    k: 1,
                })
            }
        }
        let (open, gate) = std::sync::mpsc::channel();
        let (tx, _rx) = std::sync::mpsc::channel();
        // The worker is held in its warm-up: what is queued stays queued.
        let (batcher, workers) = start(vec![Gate(gate, Vec::new())], p, 4, tx).unwrap();
        batcher
            .submit((0..3).map(|_| job(0, a).0).collect())
            .unwrap();
        assert_eq!(batcher.depth(), 3);
        let e = batcher
            .submit((0..2).map(|_| job(1, b).0).collect())
            .unwrap_err();
        assert!(matches!(e, ServeError::QueueFull(3)), "{e}");
        let e = batcher.submit(vec![job(1, b).0, job(2, b).0]).unwrap_err();
        assert!(matches!(e, ServeError::Internal(_)), "{e}");
        assert_eq!(batcher.depth(), 3);
        batcher.submit(vec![job(1, b).0]).unwrap();
        assert_eq!(batcher.depth(), 4);
        drop(open);
        drop(batcher);
        workers.join();
    }
}
