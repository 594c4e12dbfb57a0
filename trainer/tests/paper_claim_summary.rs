//! `bench/paper_claim_summary.py` (issue 24's verdicts) on runs with known numbers: the means,
//! standard deviations and 2-standard-error verdicts it prints are the ones computed by hand,
//! it reports test AP (never val), picks the "val-picked" step by val, and leaves unfinished
//! runs out of the means.

use std::path::Path;

/// Writes RUNS/NAME/{log.jsonl,eval.jsonl}: evals at steps 5 and 10 with the given
/// (val AP, test AP) pairs; `finished` = the last eval is at step 10.
fn run(runs: &Path, name: &str, evals: &[(u64, f64, f64)]) {
    let d = runs.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let last = evals.last().map_or(0, |e| e.0);
    let log: String = (1..=last)
        .map(|s| format!("{{\"step\":{s},\"loss\":1.0,\"seconds\":0.5}}\n"))
        .collect();
    std::fs::write(d.join("log.jsonl"), log).unwrap();
    let ev: String = evals
        .iter()
        .map(|(s, v, t)| {
            format!(
                "{{\"step\":{s},\"AP\":{v},\"AP50\":0.0,\"test\":{{\"AP\":{t},\"AP50\":0.0}}}}\n"
            )
        })
        .collect();
    std::fs::write(d.join("eval.jsonl"), ev).unwrap();
}

#[test]
fn verdicts_means_and_picked_steps_are_the_hand_computed_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    // k0: test 0.10/0.11/0.12 (mean 0.11, sd 0.01). k1: 0.20/0.21/0.22 → +0.10, SE 0.00816:
    // beyond noise. k2: 0.10/0.30/0.50 (sd 0.2) → +0.19 vs k0, SE 0.1155: within noise.
    // k1-noaux: 0.30/0.31/0.32 → k1 − noaux = −0.10: reversed. k1-nopq: one seed.
    for (i, t) in [0.10, 0.11, 0.12].iter().enumerate() {
        run(runs, &format!("k0-s{i}"), &[(5, 0.5, 0.9), (10, 0.4, *t)]);
    }
    for (i, t) in [0.20, 0.21, 0.22].iter().enumerate() {
        // val peaks at step 5, where test is 0.05: the val-picked test AP is 0.05
        run(runs, &format!("k1-s{i}"), &[(5, 0.6, 0.05), (10, 0.3, *t)]);
    }
    for (i, t) in [0.10, 0.30, 0.50].iter().enumerate() {
        run(runs, &format!("k2-s{i}"), &[(5, 0.1, 0.0), (10, 0.2, *t)]);
    }
    for (i, t) in [0.30, 0.31, 0.32].iter().enumerate() {
        run(runs, &format!("k1-noaux-s{i}"), &[(10, 0.2, *t)]);
    }
    run(runs, "k1-nopq-s0", &[(10, 0.2, 0.25)]);
    // unfinished: stopped at step 5, must not enter k0's mean
    run(runs, "k0-s3", &[(5, 0.9, 0.99)]);
    std::fs::write(runs.join("plan.json"), r#"{"steps": 10}"#).unwrap();

    let python = std::env::var("CODETR_PYTHON").expect("CODETR_PYTHON (make test sets it)");
    let json = tmp.path().join("summary.json");
    let md = tmp.path().join("summary.md");
    let out = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../bench/paper_claim_summary.py"
        ))
        .arg(runs)
        .arg("10")
        .arg("--json")
        .arg(&json)
        .arg("--out")
        .arg(&md)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let close = |v: &serde_json::Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-9;
    let k0 = &s["arms"]["k0"];
    assert_eq!(k0["n"], 3, "the unfinished k0-s3 is left out");
    assert_eq!(k0["runs"], 4);
    assert!(close(&k0["mean"], 0.11) && close(&k0["std"], 0.01), "{k0}");
    assert!(close(&s["arms"]["k1"]["picked_mean"], 0.05));
    assert!(close(&s["arms"]["k1"]["mean"], 0.21));
    let verdict = |a: &str, b: &str| -> (f64, String) {
        let c = s["comparisons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["a"] == a && c["b"] == b)
            .unwrap_or_else(|| panic!("no {a} − {b}"));
        (
            c["se"].as_f64().unwrap_or(f64::NAN),
            c["verdict"].as_str().unwrap().to_string(),
        )
    };
    let (se, v) = verdict("k1", "k0");
    assert!((se - (2.0 * 0.0001 / 3.0f64).sqrt()).abs() < 1e-9, "{se}");
    assert_eq!(v, "holds beyond noise");
    let (se, v) = verdict("k2", "k0");
    assert!((se - (0.04 / 3.0 + 0.0001 / 3.0f64).sqrt()).abs() < 1e-9);
    assert_eq!(v, "within noise");
    assert_eq!(verdict("k1", "k1-noaux").1, "reversed beyond noise");
    assert_eq!(verdict("k1", "k1-nopq").1, "needs ≥ 2 seeds per arm");
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("k0-s3 (step 5)"), "{text}");
    assert!(
        text.contains("| 10 |"),
        "the curve has its step-10 row: {text}"
    );
}

/// `bench/paper_claim_gpu.sh` itself, in its CPU rehearsal at the smallest size that still runs
/// the whole protocol: two arms × two seeds side by side, evals on val and test, the summary
/// with its verdict, the returned logs; then a second call restored from those logs keeps the
/// plan and skips the finished runs. Guards the GPU script from rotting between device sessions.
#[test]
fn the_gpu_protocol_rehearses_end_to_end_and_resumes_from_its_returned_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/paper_claim_gpu.sh");
    let python = std::env::var("CODETR_PYTHON").expect("CODETR_PYTHON (make test sets it)");
    let run = |work: &str, out: &str, restore: Option<&Path>| {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(script)
            .env("REHEARSAL", "1")
            .env("BIN", env!("CARGO_BIN_EXE_codetr-train"))
            .env("PYTHON", &python)
            .env("ARMS", "k0 k1")
            .env("SEEDS", "0 1")
            .env("STEPS", "2")
            .env("BATCH", "2")
            .env("EVAL_EVERY", "1")
            .env("WORK", tmp.path().join(work))
            .env("OUT", tmp.path().join(out));
        if let Some(r) = restore {
            cmd.env("RESTORE", r);
        }
        let o = cmd.output().unwrap();
        let log = std::fs::read_to_string(tmp.path().join(out).join("log.txt")).unwrap_or_default();
        assert!(
            o.status.success(),
            "{log}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        log
    };
    run("w1", "o1", None);
    let o1 = tmp.path().join("o1");
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o1.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["plan"]["steps"], 2);
    for arm in ["k0", "k1"] {
        assert_eq!(s["arms"][arm]["n"], 2, "{arm}: {}", s["arms"][arm]);
        for r in s["runs"].as_array().unwrap() {
            // two evaluations, each with the held-out split
            assert_eq!(r["curve"].as_array().unwrap().len(), 2, "{r}");
            assert!(r["curve"][1]["test_AP"].is_f64(), "{r}");
        }
    }
    let md = std::fs::read_to_string(o1.join("paper_claim_gpu.md")).unwrap();
    assert!(md.contains("| k1 − k0 |"), "{md}");
    assert!(o1.join("runs.tar.gz").is_file());
    // a later call, restored from what the first returned: nothing left to train
    let log = run("w2", "o2", Some(&o1));
    assert!(log.contains("plan (kept): 2 steps"), "{log}");
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("o2/summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        again["arms"], s["arms"],
        "the restored runs are the same runs"
    );
}
