//! The server's own view of a level, from its Prometheus `/metrics` before and after:
//! how long images waited in the batcher's queue, how long a batch ran, the mean batch size.
//! Metric names are codetr-serve's (`server/src/metrics.rs`); a peer without them gets `None`.

use std::collections::HashMap;

/// Sums of every sample per metric name (label sets added together).
#[derive(Debug, Clone, Default)]
pub struct Snapshot(HashMap<String, f64>);

impl Snapshot {
    /// Parses the Prometheus text exposition format; malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut m: HashMap<String, f64> = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            *m.entry(name.to_owned()).or_default() += value;
        }
        Self(m)
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }
}

/// Server-side means over one level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerSplit {
    /// Mean time an image waited in the batcher's queue, ms.
    pub queue_ms: f64,
    /// Mean duration of one session run (one batch), ms.
    pub infer_ms: f64,
    /// Mean real images per batch.
    pub mean_batch: f64,
    /// Images run.
    pub images: f64,
}

/// The split between two snapshots, if the server exposes codetr-serve's metrics.
pub fn split(before: &Snapshot, after: &Snapshot) -> Option<ServerSplit> {
    let d = |n: &str| Some(after.get(n)? - before.get(n).unwrap_or(0.0));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let images = d("codetr_inference_count_total")?;
    let runs = d("codetr_execution_count_total")?;
    Some(ServerSplit {
        queue_ms: 1e3
            * ratio(
                d("codetr_queue_wait_seconds_sum")?,
                d("codetr_queue_wait_seconds_count")?,
            ),
        infer_ms: 1e3
            * ratio(
                d("codetr_inference_duration_seconds_sum")?,
                d("codetr_inference_duration_seconds_count")?,
            ),
        mean_batch: ratio(images, runs),
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_from_two_scrapes() {
        let a = Snapshot::parse(
            "# HELP x\ncodetr_inference_count_total 10\ncodetr_execution_count_total 5\n\
             codetr_queue_wait_seconds_sum 0.5\ncodetr_queue_wait_seconds_count 10\n\
             codetr_inference_duration_seconds_sum 1\ncodetr_inference_duration_seconds_count 5\n",
        );
        let b = Snapshot::parse(
            "codetr_inference_count_total 30\ncodetr_execution_count_total 10\n\
             codetr_queue_wait_seconds_sum{a=\"1\"} 1.5\ncodetr_queue_wait_seconds_count 30\n\
             codetr_inference_duration_seconds_sum 2\ncodetr_inference_duration_seconds_count 10\n",
        );
        let s = split(&a, &b).unwrap();
        assert_eq!(s.images, 20.0);
        assert!((s.mean_batch - 4.0).abs() < 1e-9);
        assert!((s.queue_ms - 50.0).abs() < 1e-9);
        assert!((s.infer_ms - 200.0).abs() < 1e-9);
        assert!(split(&Snapshot::default(), &Snapshot::parse("up 1\n")).is_none());
    }
}
