//! Raw ONNX Runtime throughput: the server's own session setup ([`engine::open`], same
//! provider and thread settings) run in a tight loop on pre-decoded, pre-resized tensors — the
//! ceiling `codetr-serve` is measured against (issue goal P1: server ÷ raw ≥ 0.95).
//!
//! `--sessions N` runs N sessions on N threads at once (what the server does with
//! `--workers N`) and reports their aggregate.
//!
//! `cargo bench -p codetr-serve --bench raw_ort -- --model M.onnx [--batch 1,8] [--seconds 10]
//!  [--intra-threads 0] [--sessions 1] [--config serve.toml] [--providers cuda]
//!  [--cuda-tf32 true|false] [--io-binding true|false] [--profile PREFIX] [--json out.json]`.
//!  Needs ORT_DYLIB_PATH.
//!
//! `--config` takes the server's TOML (its `[runtime]` section: providers, CUDA settings), so
//! the ceiling is measured with exactly the server's session setup. `--profile PREFIX` writes
//! ONNX Runtime's per-node trace of the timed runs (bench/ort_profile.py summarises it).

use std::time::{Duration, Instant};

use codetr_serve::config::RuntimeConfig;
use codetr_serve::engine::{self, Runner};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; without --model there is nothing to measure.
    let Some(model) = arg(&args, "--model") else {
        eprintln!("raw_ort: pass --model PATH (see bench/serve.sh); nothing measured");
        return Ok(());
    };
    let batches: Vec<usize> = arg(&args, "--batch")
        .unwrap_or_else(|| "1,8".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let seconds: f64 = arg(&args, "--seconds").map_or(Ok(10.0), |s| s.parse())?;
    let mut rt = match arg(&args, "--config") {
        Some(p) => {
            let cfg: codetr_serve::config::ServeConfig =
                toml::from_str(&std::fs::read_to_string(&p)?)?;
            cfg.runtime
        }
        None => RuntimeConfig::default(),
    };
    if let Some(t) = arg(&args, "--intra-threads") {
        rt.intra_threads = t.parse()?;
    }
    if let Some(p) = arg(&args, "--providers") {
        rt.providers = p
            .split(',')
            .map(|x| {
                <codetr_serve::config::Provider as clap::ValueEnum>::from_str(x.trim(), true)
                    .map_err(|e| anyhow::anyhow!("--providers: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(t) = arg(&args, "--cuda-tf32") {
        rt.cuda_tf32 = t.parse()?;
    }
    if let Some(t) = arg(&args, "--io-binding") {
        rt.io_binding = t.parse()?;
    }
    rt.profile = arg(&args, "--profile").map(std::path::PathBuf::from);
    let sessions: usize = arg(&args, "--sessions").map_or(Ok(1), |s| s.parse())?;
    let env = engine::environment(None)?;
    let path = std::path::PathBuf::from(&model);
    let mut runners = Vec::new();
    let mut info = None;
    let mut provider = None;
    for _ in 0..sessions.max(1) {
        let (session, p, failures) = engine::open(env, &path, &rt, &batches, None)?;
        for f in failures {
            eprintln!(
                "raw ORT: provider {} did not take: {}",
                f.provider.as_str(),
                f.error
            );
        }
        let i = engine::inspect(&session, &path, &[])?;
        runners.push(Runner::new(session, p, &i, &rt)?);
        provider = Some(p);
        info = Some(i);
    }
    let (info, provider) = (info.expect("one session"), provider.expect("one session"));
    let [h, w] = info.input_sizes[0];
    let per = h as usize * w as usize * 3;
    // Real-looking pixels (a gradient), not zeros, in case a kernel shortcuts on them.
    let image: Vec<u8> = (0..per).map(|i| (i * 7 % 251) as u8).collect();
    let mut rows = Vec::new();
    for &n in &batches {
        let pixels = image.repeat(n);
        let sizes = vec![codetr_serve::engine::ImageSizes::full([h, w]); n];
        let deadline = Duration::from_secs_f64(seconds);
        // Every session runs the same loop on its own thread; runs are summed.
        let per_thread: anyhow::Result<Vec<(u64, Vec<f64>, f64)>> = std::thread::scope(|sc| {
            let hs: Vec<_> = runners
                .iter_mut()
                .map(|runner| {
                    let (pixels, sizes) = (&pixels, &sizes);
                    sc.spawn(move || -> anyhow::Result<(u64, Vec<f64>, f64)> {
                        for _ in 0..3 {
                            runner.run([h, w], n, pixels, sizes)?;
                        }
                        let t = Instant::now();
                        let (mut runs, mut lat) = (0u64, Vec::new());
                        while t.elapsed() < deadline {
                            let t1 = Instant::now();
                            runner.run([h, w], n, pixels, sizes)?;
                            lat.push(t1.elapsed().as_secs_f64() * 1e3);
                            runs += 1;
                        }
                        Ok((runs, lat, t.elapsed().as_secs_f64()))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("bench thread"))
                .collect::<anyhow::Result<Vec<_>>>()
        });
        // A batch that fails (GPU out of memory, a kernel's limits) is a result, not the end.
        let per_thread = match per_thread {
            Ok(p) => p,
            Err(e) => {
                eprintln!("raw ORT batch {n}: FAILED: {e}");
                rows.push(
                    serde_json::json!({"batch": n, "sessions": sessions, "error": e.to_string()}),
                );
                continue;
            }
        };
        let runs: u64 = per_thread.iter().map(|p| p.0).sum();
        let el = per_thread.iter().map(|p| p.2).fold(0.0, f64::max);
        let mut lat: Vec<f64> = per_thread.into_iter().flat_map(|p| p.1).collect();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        let row = serde_json::json!({
            "batch": n, "sessions": sessions, "runs": runs, "seconds": el,
            "images_per_s": (runs as usize * n) as f64 / el,
            "run_ms_p50": pct(0.5), "run_ms_p99": pct(0.99),
            "per_image_ms_p50": pct(0.5) / n as f64,
        });
        eprintln!(
            "raw ORT batch {n} × {sessions} session(s): {:.2} images/s, run p50 {:.1} ms",
            row["images_per_s"],
            pct(0.5)
        );
        rows.push(row);
    }
    let mut profiles = Vec::new();
    if rt.profile.is_some() {
        for r in &mut runners {
            profiles.push(r.end_profiling()?);
        }
    }
    let report = serde_json::json!({
        "model": model, "provider": provider.as_str(), "input": [h, w], "results": rows,
        "io_binding": rt.io_binding,
        "host_memory": runners.first().map(Runner::host_memory),
        "cuda_tf32": rt.cuda_tf32, "cuda_conv_algo": rt.cuda_conv_algo,
        "cuda_arena": rt.cuda_arena, "cuda_prefer_nhwc": rt.cuda_prefer_nhwc,
        "profiles": profiles,
    });
    match arg(&args, "--json") {
        Some(p) => std::fs::write(&p, serde_json::to_vec_pretty(&report)?)?,
        None => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}
