//! `codetr-loadtest`: load `POST /v1/detect` with images from a folder, level by level, and
//! report throughput, latency percentiles and the server's own queue/inference split.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use codetr_loadtest::client::{self, Form, Http};
use codetr_loadtest::run::{self, Bounds, Level};
use codetr_loadtest::{LoadError, report, scrape};
use hyper::Uri;

/// Load generator for codetr-serve (and servers with the same API).
///
/// Closed loop by default (--concurrency: each client sends its next request when the last one
/// is answered). With --rate, open loop: requests start on a fixed schedule and latency counts
/// from the scheduled start (coordinated omission corrected). Only loopback targets unless
/// --allow-remote.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Base URL of the server under test.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A second server to run the same levels against, interleaved; ratios a/b are printed.
    #[arg(long)]
    compare: Option<String>,
    /// Name of --url in the report.
    #[arg(long, default_value = "codetr-serve")]
    name: String,
    /// Name of --compare in the report.
    #[arg(long, default_value = "peer")]
    compare_name: String,
    /// Folder of .jpg/.jpeg/.png/.webp images, sent round-robin.
    #[arg(long)]
    images: PathBuf,
    /// Request path and query.
    #[arg(long, default_value = "/v1/detect")]
    path: String,
    /// How each image is sent.
    #[arg(long, value_enum, default_value = "raw")]
    form: Form,
    /// Closed-loop levels: clients in flight, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    concurrency: Vec<usize>,
    /// Open-loop levels: arrival rates (requests/s), comma-separated; replaces --concurrency.
    #[arg(long, value_delimiter = ',')]
    rate: Option<Vec<f64>>,
    /// Measured seconds per window (a level runs --rounds windows per target).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Rounds per level: the targets alternate (a b, b a, …) round by round and each level's
    /// result merges its rounds, so slow drift of a noisy machine favours neither target.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Unmeasured warm-up seconds before each window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Closed loop: stop a level after this many measured requests (else --duration bounds it).
    #[arg(long)]
    requests: Option<u64>,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the throughput-vs-p99 PNG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Allow targets that are not loopback addresses.
    #[arg(long)]
    allow_remote: bool,
}

fn parse_base(s: &str, allow_remote: bool) -> Result<Uri, LoadError> {
    let uri: Uri = s
        .parse()
        .map_err(|e| LoadError::Config(format!("{s}: not a URL: {e}")))?;
    client::check_target(&uri, allow_remote)?;
    Ok(uri)
}

fn join(base: &Uri, path: &str) -> Result<Uri, LoadError> {
    let s = format!("{}{}", base.to_string().trim_end_matches('/'), path);
    s.parse()
        .map_err(|e| LoadError::Config(format!("{s}: not a URL: {e}")))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    if !(cli.duration > 0.0 && cli.warmup >= 0.0 && cli.timeout > 0.0) {
        anyhow::bail!("--duration and --timeout must be > 0, --warmup ≥ 0");
    }
    let mut targets = vec![(
        "a",
        cli.name.clone(),
        parse_base(&cli.url, cli.allow_remote)?,
    )];
    if let Some(c) = &cli.compare {
        targets.push((
            "b",
            cli.compare_name.clone(),
            parse_base(c, cli.allow_remote)?,
        ));
    }
    let payloads = Arc::new(client::load_images(&cli.images, cli.form)?);
    let levels: Vec<Level> = match &cli.rate {
        Some(r) => {
            if r.iter().any(|&x| !(x > 0.0 && x.is_finite())) {
                anyhow::bail!("--rate values must be > 0");
            }
            r.iter().map(|&rate| Level::Open { rate }).collect()
        }
        None => {
            if cli.concurrency.contains(&0) {
                anyhow::bail!("--concurrency values must be ≥ 1");
            }
            cli.concurrency
                .iter()
                .map(|&concurrency| Level::Closed { concurrency })
                .collect()
        }
    };
    let bounds = Bounds {
        warmup: Duration::from_secs_f64(cli.warmup),
        duration: Duration::from_secs_f64(cli.duration),
        max_requests: cli.requests,
    };
    let http = Http::new(Duration::from_secs_f64(cli.timeout));
    let mut uris = Vec::new();
    for (_, name, base) in &targets {
        let detect = join(base, &cli.path)?;
        let metrics = join(base, "/metrics")?;
        // Fail early and clearly when a target is not up.
        let probe = join(base, "/healthz")?;
        if http.get_text(&probe).await.is_none() && http.get_text(&metrics).await.is_none() {
            return Err(
                LoadError::Http(format!("{name} at {base} does not answer /healthz")).into(),
            );
        }
        uris.push((detect, metrics));
    }
    eprintln!(
        "{} images, {} levels × {} target(s) × {} round(s), {:.0}+{:.0} s each",
        payloads.len(),
        levels.len(),
        targets.len(),
        cli.rounds,
        cli.warmup,
        cli.duration
    );
    if cli.rounds == 0 {
        anyhow::bail!("--rounds must be ≥ 1");
    }
    let mut results = Vec::new();
    let mut turn = 0usize;
    for level in &levels {
        let n = targets.len();
        let mut tallies: Vec<run::Tally> = (0..n).map(|_| run::Tally::new()).collect();
        let mut seconds = vec![0.0f64; n];
        let mut before: Vec<Option<scrape::Snapshot>> = Vec::with_capacity(n);
        for (_, m) in &uris {
            before.push(http.get_text(m).await.map(|t| scrape::Snapshot::parse(&t)));
        }
        for _ in 0..cli.rounds {
            // Alternate which target goes first.
            let mut order: Vec<usize> = (0..n).collect();
            if turn % 2 == 1 {
                order.reverse();
            }
            turn += 1;
            for ti in order {
                let (t, s) =
                    run::run_window(&http, &uris[ti].0, payloads.clone(), *level, bounds).await;
                tallies[ti].merge(t);
                seconds[ti] += s;
            }
        }
        for (ti, tally) in tallies.into_iter().enumerate() {
            let (tag, name, _) = &targets[ti];
            let mut r = tally.finish(tag, *level, seconds[ti]);
            let after = http
                .get_text(&uris[ti].1)
                .await
                .map(|t| scrape::Snapshot::parse(&t));
            if let (Some(b), Some(a)) = (&before[ti], &after) {
                r.server = scrape::split(b, a);
            }
            eprintln!(
                "{name:<14} {level:<10} {:>8.2} req/s  p50 {:>8.1} ms  p99 {:>8.1} ms  errors {:?}",
                r.throughput, r.latency_ms.p50, r.latency_ms.p99, r.errors
            );
            results.push(r);
        }
    }
    println!("{}", report::table(&results));
    let names: Vec<(&str, String)> = targets.iter().map(|(t, n, _)| (*t, n.clone())).collect();
    if let Some(p) = &cli.json {
        let settings = serde_json::json!({
            "targets": targets.iter().map(|(t, n, u)| serde_json::json!({"tag": t, "name": n, "url": u.to_string()})).collect::<Vec<_>>(),
            "images": payloads.len(),
            "form": cli.form,
            "path": cli.path,
            "duration_s": cli.duration,
            "warmup_s": cli.warmup,
            "rounds": cli.rounds,
        });
        let body = serde_json::to_vec_pretty(&report::json(&settings, &results))?;
        codetr_loadtest::write_atomic(p, &body)
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &cli.plot {
        let labelled = report::plot(&results, &names, p)?;
        eprintln!(
            "wrote {}{}",
            p.display(),
            if labelled {
                ""
            } else {
                " (no font found: unlabelled)"
            }
        );
    }
    Ok(())
}
