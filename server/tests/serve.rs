//! `codetr-serve` end to end on a real exported graph (the committed micro fixture, made by
//! scripts/make-serve-fixture.sh with the real exporter): every request form, parameters,
//! every error status, batching, queue full, deadlines, drain on SIGTERM, startup errors.
//! Needs `CODETR_PYTHON` (for the ONNX Runtime wheel's library) — `make test` sets it.

mod common;

use std::io::Cursor;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn encode(img: &image::DynamicImage, f: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, f).unwrap();
    out.into_inner()
}

fn detections(j: &Value, image: usize) -> &Vec<Value> {
    j["images"][image]["detections"].as_array().unwrap()
}

/// `tests/python/onnx_run.py`: `model` in ONNX Runtime (Python) on `inputs` ({name: {dtype,
/// shape, data}}); its JSON answer (outputs and metadata).
fn onnx_run(model: &std::path::Path, inputs: &Value) -> Value {
    let tmp = tempfile::tempdir().unwrap();
    let ip = tmp.path().join("in.json");
    std::fs::write(&ip, inputs.to_string()).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/onnx_run.py");
    let out = run_python(&[script.as_os_str(), model.as_os_str(), ip.as_os_str()]);
    serde_json::from_slice(&out).unwrap()
}

/// Output `name` of an [`onnx_run`] answer, flat.
fn output(answer: &Value, name: &str) -> Vec<f64> {
    answer["outputs"][name]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Structure every 200 must have; boxes inside the image, scores sorted and above `thr`.
fn check_result(j: &Value, n_images: usize, thr: f64) {
    assert!(j["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(j["model"]["name"], "micro");
    assert_eq!(j["model"]["provider"], "cpu");
    assert_eq!(j["images"].as_array().unwrap().len(), n_images);
    for t in ["queue", "decode", "preprocess", "infer", "total"] {
        assert!(j["timings_ms"][t].as_f64().unwrap() >= 0.0);
    }
    for i in 0..n_images {
        let (w, h) = (
            j["images"][i]["width"].as_f64().unwrap(),
            j["images"][i]["height"].as_f64().unwrap(),
        );
        let d = detections(j, i);
        let mut last = f64::INFINITY;
        for det in d {
            let s = det["score"].as_f64().unwrap();
            assert!(s >= thr && s <= last, "{det}");
            last = s;
            let b = &det["box"];
            let (x1, y1, x2, y2) = (
                b["x1"].as_f64().unwrap(),
                b["y1"].as_f64().unwrap(),
                b["x2"].as_f64().unwrap(),
                b["y2"].as_f64().unwrap(),
            );
            assert!(
                0.0 <= x1 && x1 <= x2 && x2 <= w && 0.0 <= y1 && y1 <= y2 && y2 <= h,
                "{det}"
            );
            assert!(det["label"].as_str().is_some());
        }
    }
}

#[test]
fn every_request_form_gives_the_same_detections() {
    let s = Server::start(&["--score-threshold", "0"]);
    let jpg = sample_jpeg();
    let raw = s.post("/v1/detect", "image/jpeg", &jpg);
    assert_eq!(raw.status, 200, "{}", raw.text());
    let rj = raw.json();
    check_result(&rj, 1, 0.0);
    assert_eq!(
        (
            rj["images"][0]["width"].as_u64(),
            rj["images"][0]["height"].as_u64()
        ),
        (Some(256), Some(256))
    );
    // The micro graph's top-k is 20; threshold 0 keeps all.
    assert_eq!(detections(&rj, 0).len(), 20);
    assert!(raw.header("x-request-id").is_some());

    // Same pixels as PNG and WebP (lossless) → same detections as each other.
    let img = image::load_from_memory(&jpg).unwrap();
    let png = s
        .post(
            "/v1/detect",
            "image/png",
            &encode(&img, image::ImageFormat::Png),
        )
        .json();
    let webp = s
        .post(
            "/v1/detect",
            "image/webp",
            &encode(&img, image::ImageFormat::WebP),
        )
        .json();
    assert_eq!(png["images"], webp["images"]);
    check_result(&png, 1, 0.0);

    // JSON: one image, then two; multipart with two parts (`image` and `file`).
    let one = s.post(
        "/v1/detect",
        "application/json",
        json!({"image": b64(&jpg)}).to_string().as_bytes(),
    );
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["images"], rj["images"]);
    let two = s
        .post(
            "/v1/detect",
            "application/json",
            json!({"images": [b64(&jpg), format!("data:image/jpeg;base64,{}", b64(&jpg))]})
                .to_string()
                .as_bytes(),
        )
        .json();
    check_result(&two, 2, 0.0);
    assert_eq!(two["images"][0], rj["images"][0]);
    assert_eq!(two["images"][1], rj["images"][0]);
    let (ct, body) = multipart(&[
        ("image", Some("a.jpg"), &jpg),
        ("file", Some("b.jpg"), &jpg),
        ("max_detections", None, b"3"),
    ]);
    let mp = s.post("/v1/detect", &ct, &body);
    assert_eq!(mp.status, 200, "{}", mp.text());
    let mj = mp.json();
    check_result(&mj, 2, 0.0);
    assert_eq!(detections(&mj, 1).len(), 3);
    assert_eq!(detections(&mj, 0)[..], detections(&rj, 0)[..3]);
}

#[test]
fn parameters_filter_the_detections() {
    let s = Server::start(&[]);
    let jpg = sample_jpeg();
    let all = s
        .post("/v1/detect?score_threshold=0", "image/jpeg", &jpg)
        .json();
    let all = detections(&all, 0).clone();
    // Threshold between two scores keeps exactly those above it.
    let mid = (all[4]["score"].as_f64().unwrap() + all[5]["score"].as_f64().unwrap()) / 2.0;
    let r = s
        .post(
            &format!("/v1/detect?score_threshold={mid}"),
            "image/jpeg",
            &jpg,
        )
        .json();
    check_result(&r, 1, mid);
    assert_eq!(detections(&r, 0)[..], all[..5]);
    // max_detections.
    let r = s
        .post(
            "/v1/detect?score_threshold=0&max_detections=2",
            "image/jpeg",
            &jpg,
        )
        .json();
    assert_eq!(detections(&r, 0)[..], all[..2]);
    // classes by name and id, query and JSON.
    let first = all[0]["label"].as_str().unwrap().to_owned();
    let first_id = all[0]["class_id"].as_u64().unwrap();
    let by_name = s
        .post(
            &format!("/v1/detect?score_threshold=0&classes={first}"),
            "image/jpeg",
            &jpg,
        )
        .json();
    let by_id = s
        .post(
            "/v1/detect",
            "application/json",
            json!({"image": b64(&jpg), "score_threshold": 0, "classes": [first_id]})
                .to_string()
                .as_bytes(),
        )
        .json();
    let want: Vec<&Value> = all.iter().filter(|d| d["class_id"] == first_id).collect();
    assert!(!want.is_empty());
    assert_eq!(detections(&by_name, 0).iter().collect::<Vec<_>>(), want);
    assert_eq!(detections(&by_id, 0).iter().collect::<Vec<_>>(), want);
    // Default threshold (0.3 from the config) applies when none is given: a random-init
    // model scores below it.
    let d = s.post("/v1/detect", "image/jpeg", &jpg).json();
    let expect = all
        .iter()
        .filter(|d| d["score"].as_f64().unwrap() >= 0.3)
        .count();
    assert_eq!(detections(&d, 0).len(), expect);
}

#[test]
fn bad_input_corpus_gets_clear_4xx_and_the_server_stays_up() {
    let s = Server::start(&[
        "--max-body-bytes",
        "8000000",
        "--max-images",
        "2",
        "--max-queue-size",
        "8",
    ]);
    let jpg = sample_jpeg();
    let rss0 = s.rss_kib();

    // 422: zero bytes, truncated JPEG, text pretending to be JPEG, 100k×100k PNG header.
    s.post("/v1/detect", "image/jpeg", b"")
        .assert_error(422, "invalid_image");
    s.post("/v1/detect", "image/jpeg", &jpg[..jpg.len() / 2])
        .assert_error(422, "invalid_image");
    s.post("/v1/detect", "image/jpeg", b"this is not a JPEG, just text")
        .assert_error(422, "invalid_image");
    let mut png = encode(
        &image::DynamicImage::new_rgb8(1, 1),
        image::ImageFormat::Png,
    );
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let r = s.post("/v1/detect", "image/png", &png);
    assert_eq!(r.status, 422, "{}", r.text());
    // 415: GIF (by content type and by bytes), text/plain, no content type.
    s.post("/v1/detect", "image/gif", b"GIF89a\x01\x00\x01\x00")
        .assert_error(415, "unsupported_media_type");
    s.post(
        "/v1/detect",
        "image/png",
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    )
    .assert_error(415, "unsupported_media_type");
    s.post("/v1/detect", "text/plain", b"hello")
        .assert_error(415, "unsupported_media_type");
    http(s.addr, "POST", "/v1/detect", &[], &jpg)
        .unwrap()
        .assert_error(415, "unsupported_media_type");
    // 413: a 100 MB body (Content-Length announced, then streamed).
    let big = vec![0u8; 100 << 20];
    s.post("/v1/detect", "image/jpeg", &big)
        .assert_error(413, "payload_too_large");
    let (ct, body) = multipart(&[("image", Some("big.jpg"), &big[..9_000_000])]);
    s.post("/v1/detect", &ct, &body)
        .assert_error(413, "payload_too_large");
    drop(big);
    // 400: bad base64, wrong JSON types, unknown field, both forms, no images, too many,
    // multipart without parts, bad parameters.
    let bad_json: [Value; 6] = [
        json!({"image": "!!!not base64!!!"}),
        json!({"image": 42}),
        json!({"images": "abc"}),
        json!({"image": b64(&jpg), "score_threshold": "high"}),
        json!({"image": b64(&jpg), "colour": "red"}),
        json!({}),
    ];
    for j in bad_json {
        s.post("/v1/detect", "application/json", j.to_string().as_bytes())
            .assert_error(400, "bad_request");
    }
    s.post("/v1/detect", "application/json", b"{not json")
        .assert_error(400, "bad_request");
    s.post(
        "/v1/detect",
        "application/json",
        json!({"images": [b64(&jpg), b64(&jpg), b64(&jpg)]})
            .to_string()
            .as_bytes(),
    )
    .assert_error(400, "bad_request");
    let (ct, body) = multipart(&[]);
    s.post("/v1/detect", &ct, &body)
        .assert_error(400, "bad_request");
    s.post("/v1/detect", "multipart/form-data", b"garbage")
        .assert_error(400, "bad_request");
    for q in [
        "score_threshold=1.5",
        "score_threshold=nan",
        "score_threshold=-0.1",
        "max_detections=0",
        "max_detections=21",
        "max_detections=abc",
        "classes=unicorn",
        "classes=10",
        "timeout_ms=0",
        "bogus=1",
    ] {
        s.post(&format!("/v1/detect?{q}"), "image/jpeg", &jpg)
            .assert_error(400, "bad_request");
    }
    // 404 / 405.
    s.get("/nope").unwrap().assert_error(404, "not_found");
    http(s.addr, "GET", "/v1/detect", &[], &[])
        .unwrap()
        .assert_error(405, "method_not_allowed");

    // Still serving, and memory did not balloon (the 100 MB body was never buffered).
    let ok = s.post("/v1/detect", "image/jpeg", &jpg);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(s.get("/healthz").unwrap().status, 200);
    let rss1 = s.rss_kib();
    assert!(
        rss1 < rss0 + 60 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[test]
fn probes_models_metrics_openapi_and_page() {
    let s = Server::start(&["--max-batch-size", "4"]);
    assert_eq!(s.get("/healthz").unwrap().json()["status"], "ok");
    assert_eq!(s.get("/readyz").unwrap().json()["status"], "ready");
    let m = s.get("/v1/models").unwrap().json();
    assert_eq!(m["name"], "micro");
    assert_eq!(m["provider"], "cpu");
    assert_eq!(
        (&m["io_binding"], &m["host_memory"]),
        (&json!(true), &json!("cpu"))
    );
    assert_eq!(m["ready"], true);
    assert_eq!(m["classes"].as_array().unwrap().len(), 10);
    assert_eq!(m["metadata"]["max_detections"], 20);
    assert_eq!(m["batching"]["batch_sizes"], json!([1, 2, 4]));
    // Staged once per batch size at warm-up: per image the 64×64 RGB input, its original size
    // (i64 × 2) and 20 detections (label i64, score f32, box f32 × 4).
    let per_image = 64.0 * 64.0 * 3.0 + 16.0 + 20.0 * (8.0 + 4.0 + 16.0);
    assert_eq!(
        s.metric("codetr_staging_bytes"),
        per_image * (1 + 2 + 4) as f64
    );
    let plain = Server::start(&["--io-binding", "false"]);
    assert_eq!(plain.get("/v1/models").unwrap().json()["io_binding"], false);
    let spec = s.get("/openapi.json").unwrap().json();
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/v1/detect"]["post"]["responses"]["503"].is_object());
    let page = s.get("/").unwrap();
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("<canvas"));
    let metrics = s.get("/metrics").unwrap().text();
    for name in [
        "codetr_provider_info{provider=\"cpu\"",
        "codetr_ready 1",
        "codetr_http_requests_total{route=\"/v1/models\",method=\"GET\",status=\"200\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    // Warm-up ran every batch size once, and counted nothing as traffic.
    assert!(s.log().contains("batch_sizes=[1, 2, 4]"), "{}", s.log());
}

#[test]
fn concurrent_requests_are_batched_together() {
    // A long queue delay makes the first image wait for the others.
    let s = Server::start(&["--max-batch-size", "8", "--max-queue-delay-us", "300000"]);
    let jpg = sample_jpeg();
    let before = (
        s.metric("codetr_inference_count_total"),
        s.metric("codetr_execution_count_total"),
    );
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|_| sc.spawn(|| s.post("/v1/detect?score_threshold=0", "image/jpeg", &jpg)))
            .collect();
        let outs: Vec<Resp> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let first = outs[0].json()["images"].clone();
        for o in &outs {
            assert_eq!(o.status, 200, "{}", o.text());
            // Padding and batch-mates do not change an image's detections.
            assert_eq!(o.json()["images"], first);
        }
    });
    let images = s.metric("codetr_inference_count_total") - before.0;
    let runs = s.metric("codetr_execution_count_total") - before.1;
    assert_eq!(images, 6.0);
    assert!(
        runs < images,
        "6 images ran in {runs} batches: no batching happened"
    );
    let sum = s.metric("codetr_batch_size_sum");
    assert_eq!(sum, 6.0);
}

/// Several workers: the other workers' sessions are opened side by side (beside the first
/// one's I/O-binding check), and every worker answers what one worker answers.
#[test]
fn several_workers_open_their_sessions_and_answer_alike() {
    let jpg = sample_jpeg();
    let one = Server::start(&["--score-threshold", "0"]);
    let want = one.post("/v1/detect", "image/jpeg", &jpg);
    assert_eq!(want.status, 200, "{}", want.text());
    let s = Server::start(&[
        "--score-threshold",
        "0",
        "--workers",
        "3",
        "--max-batch-size",
        "1",
    ]);
    let log = s.log();
    assert!(
        log.contains("further worker sessions opened")
            && log.contains("sessions=2")
            && log.contains("side_by_side=true"),
        "{log}"
    );
    let before = s.metric("codetr_inference_count_total");
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..9)
            .map(|_| sc.spawn(|| s.post("/v1/detect", "image/jpeg", &jpg)))
            .collect();
        for h in hs {
            let o = h.join().unwrap();
            assert_eq!(o.status, 200, "{}", o.text());
            assert_eq!(o.json()["images"], want.json()["images"]);
        }
    });
    assert_eq!(s.metric("codetr_inference_count_total") - before, 9.0);
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    // One worker, batches of 1, room for 16 queued images; requests of 16 images each can
    // only be admitted into an empty queue, so concurrent ones must be refused.
    let s = Server::start(&[
        "--max-batch-size",
        "1",
        "--max-queue-size",
        "16",
        "--max-images",
        "16",
    ]);
    let jpg = sample_jpeg();
    let body = json!({"images": vec![b64(&jpg); 16], "score_threshold": 0}).to_string();
    let outs: Vec<Resp> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|_| sc.spawn(|| s.post("/v1/detect", "application/json", body.as_bytes())))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let full: Vec<&Resp> = outs.iter().filter(|r| r.status == 503).collect();
    assert!(!full.is_empty(), "no request was refused");
    for r in &full {
        r.assert_error(503, "queue_full");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    for r in outs.iter().filter(|r| r.status != 503) {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(s.metric("codetr_rejected_total") >= 1.0);
}

#[test]
fn passed_deadline_answers_504_and_the_job_is_dropped() {
    // The first image of a batch waits up to 500 ms for company; a 20 ms deadline expires first.
    let s = Server::start(&["--max-batch-size", "8", "--max-queue-delay-us", "500000"]);
    let r = s.post("/v1/detect?timeout_ms=20", "image/jpeg", &sample_jpeg());
    r.assert_error(504, "deadline_exceeded");
    // The worker drops the expired job instead of running it.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(s.metric("codetr_inference_count_total"), 0.0);
    assert!(s.metric("codetr_rejected_total") >= 1.0);
}

#[test]
fn sigterm_drains_admitted_requests() {
    let mut s = Server::start(&[
        "--max-batch-size",
        "8",
        "--max-queue-delay-us",
        "800000",
        "--drain-timeout-s",
        "20",
    ]);
    let jpg = sample_jpeg();
    let addr = s.addr;
    let outs: Vec<Resp> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                sc.spawn(|| {
                    http(
                        addr,
                        "POST",
                        "/v1/detect",
                        &[("Content-Type", "image/jpeg")],
                        &jpg,
                    )
                    .unwrap()
                })
            })
            .collect();
        // The requests are admitted and waiting for batch-mates when SIGTERM arrives.
        std::thread::sleep(Duration::from_millis(300));
        s.signal("TERM");
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outs {
        assert_eq!(o.status, 200, "{}", o.text());
    }
    let status = s.child.wait().unwrap();
    assert!(status.success(), "exit {status:?}\n{}", s.log());
    assert!(s.log().contains("drained"), "{}", s.log());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after drain"
    );
}

#[test]
fn bearer_token_guards_v1_only() {
    let s = Server::start_with(&[], &[("CODETR_SERVE_AUTH_TOKEN", "s3cret-token")]);
    let r = s.get("/v1/models").unwrap();
    r.assert_error(401, "unauthorized");
    assert!(r.header("www-authenticate").is_some());
    let wrong = http(
        s.addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer s3cret-tokeN")],
        &[],
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    let ok = http(
        s.addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer s3cret-token")],
        &[],
    )
    .unwrap();
    assert_eq!(ok.status, 200);
    let d = http(
        s.addr,
        "POST",
        "/v1/detect",
        &[
            ("Authorization", "Bearer s3cret-token"),
            ("Content-Type", "image/jpeg"),
        ],
        &sample_jpeg(),
    )
    .unwrap();
    assert_eq!(d.status, 200, "{}", d.text());
    for open in ["/healthz", "/readyz", "/metrics", "/", "/openapi.json"] {
        assert_eq!(s.get(open).unwrap().status, 200, "{open}");
    }
}

#[test]
fn startup_errors_are_clear_and_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.onnx");
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"\x08\x07this is not a protobuf of a graph").unwrap();
    let truncated = dir.path().join("truncated.onnx");
    let bytes = std::fs::read(micro_model()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let micro = micro_model();
    let micro = micro.to_str().unwrap();
    let bad_toml = dir.path().join("serve.toml");
    std::fs::write(&bad_toml, "[batching]\nmax_batch = 3\n").unwrap();
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["--model", missing.to_str().unwrap()], "no such file"),
        (vec!["--model", corrupt.to_str().unwrap()], "model:"),
        (vec!["--model", truncated.to_str().unwrap()], "model:"),
        (vec![], "no model"),
        (
            vec!["--model", micro, "--config", bad_toml.to_str().unwrap()],
            "max_batch",
        ),
        (
            vec!["--model", micro, "--require-gpu", "--bind", "127.0.0.1:0"],
            "require-gpu",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = run_to_exit(&args);
        assert!(
            code.is_some_and(|c| c != 0),
            "{args:?} exited {code:?}\n{err}"
        );
        assert!(err.contains(want), "{args:?}: {want:?} not in\n{err}");
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    }
    // An unknown flag is a usage error (clap: exit 2).
    let (code, _) = run_to_exit(&["--model", "x.onnx", "--no-such-flag"]);
    assert_eq!(code, Some(2));
}

#[test]
fn cors_preflight_and_headers_follow_the_allowed_origins() {
    let s = Server::start(&["--cors-origins", "http://app.example"]);
    let pre = http(
        s.addr,
        "OPTIONS",
        "/v1/detect",
        &[
            ("Origin", "http://app.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        &[],
    )
    .unwrap();
    assert!(pre.status < 300, "{pre:?}");
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    let other = http(
        s.addr,
        "GET",
        "/healthz",
        &[("Origin", "http://evil.example")],
        &[],
    )
    .unwrap();
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);
    // Without --cors-origins no CORS header is ever sent.
    let plain = Server::start(&[]);
    let r = http(
        plain.addr,
        "GET",
        "/healthz",
        &[("Origin", "http://app.example")],
        &[],
    )
    .unwrap();
    assert_eq!(r.header("access-control-allow-origin"), None);
}

/// A graph exported with `--dynamic-size` is served at the `--input-size` given: at the
/// fixed graph's size it answers exactly what the fixed graph answers; at another size it
/// serves too. Without `--input-size`, or with one that contradicts a fixed graph, or a bad
/// one, startup fails with a clear message.
#[test]
fn dynamic_size_graph_is_served_at_the_configured_input_size() {
    let dynamic = fixtures().join("micro-dynamic.onnx");
    let d = dynamic.to_str().unwrap();
    let micro = micro_model();
    let m = micro.to_str().unwrap();
    let cases: [(Vec<&str>, &str); 4] = [
        (vec!["--model", d, "--bind", "127.0.0.1:0"], "--input-size"),
        (
            vec![
                "--model",
                m,
                "--input-size",
                "32x32",
                "--bind",
                "127.0.0.1:0",
            ],
            "fixed at 64x64",
        ),
        (vec!["--model", d, "--input-size", "8x8"], "input_size 8x8"),
        (vec!["--model", d, "--input-size", "64"], "HxW"),
    ];
    for (args, want) in cases {
        let (code, err) = run_to_exit(&args);
        assert!(code.is_some_and(|c| c != 0), "{args:?} exited {code:?}");
        assert!(err.contains(want), "{args:?}: {want:?} not in\n{err}");
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    }
    let img = sample_jpeg();
    let fixed = Server::start(&["--score-threshold", "0"]);
    let want = fixed.post("/v1/detect", "image/jpeg", &img).json();
    let dyn64 = Server::start_model(
        &dynamic,
        &["--score-threshold", "0", "--input-size", "64x64"],
        &[],
    );
    let got = dyn64.post("/v1/detect", "image/jpeg", &img).json();
    let (a, b) = (detections(&got, 0), detections(&want, 0));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["class_id"], y["class_id"]);
        let (sx, sy) = (x["score"].as_f64().unwrap(), y["score"].as_f64().unwrap());
        assert!((sx - sy).abs() <= 1e-4, "{sx} vs {sy}");
    }
    let dyn_other = Server::start_model(
        &dynamic,
        &["--score-threshold", "0", "--input-size", "96x80"],
        &[],
    );
    let r = dyn_other.post("/v1/detect", "image/jpeg", &img);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["model"]["name"], "micro-dynamic");
    let (w, h) = (
        j["images"][0]["width"].as_f64().unwrap(),
        j["images"][0]["height"].as_f64().unwrap(),
    );
    let dets = detections(&j, 0);
    assert!(!dets.is_empty());
    let mut last = f64::INFINITY;
    for det in dets {
        let s = det["score"].as_f64().unwrap();
        assert!(s <= last, "scores not sorted");
        last = s;
        let b = &det["box"];
        let (x1, y1) = (b["x1"].as_f64().unwrap(), b["y1"].as_f64().unwrap());
        let (x2, y2) = (b["x2"].as_f64().unwrap(), b["y2"].as_f64().unwrap());
        assert!(0.0 <= x1 && x1 <= x2 && x2 <= w && 0.0 <= y1 && y1 <= y2 && y2 <= h);
    }
}

/// A graph whose metadata says batches above 2 reach 2^31 elements (`codetr.max_batch`, written
/// by the exporter from the graph's shapes): the server never runs batch 4, serves 1 and 2, and
/// says so in /v1/models, the metrics and the log.
#[test]
fn batch_sizes_above_the_graph_bound_are_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let bounded = dir.path().join("bounded.onnx");
    let micro = common::micro_model();
    run_python(&[
        "-c".as_ref(),
        "import onnx, sys\n\
         m = onnx.load(sys.argv[1])\n\
         p = m.metadata_props.add(); p.key = 'codetr.max_batch'; p.value = '2'\n\
         onnx.save(m, sys.argv[2])"
            .as_ref(),
        micro.as_os_str(),
        bounded.as_os_str(),
    ]);
    let s = Server::start_model(&bounded, &["--max-batch-size", "4"], &[]);
    let m = s.get("/v1/models").unwrap().json();
    assert_eq!(m["batching"]["batch_sizes"], json!([1, 2]));
    assert_eq!(m["batching"]["max_batch_size"], 2);
    assert_eq!(m["batching"]["configured_max_batch_size"], 4);
    assert_eq!(m["batching"]["over_graph_bound"], json!([4]));
    assert_eq!(m["batching"]["graph_max_batch"], 2);
    assert_eq!(s.metric("codetr_max_batch_size"), 2.0);
    assert!(s.log().contains("BATCH SIZE DROPPED"), "{}", s.log());
    assert!(!s.log().contains("batch=4"), "batch 4 ran:\n{}", s.log());
    // Requests are served, in batches of at most 2.
    let r = s.post("/v1/detect", "image/jpeg", &sample_jpeg());
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A dynamic-size graph with bounds at named sizes (`codetr.max_batch_at`, format version 4,
/// written by `codetr-export --dynamic-size --bound-sizes`): served at a landscape and a
/// portrait size, the smaller of their bounds applies (batch 4 never runs); served at a size
/// it records nothing for, the server says so loudly and keeps the configured sizes.
#[test]
fn a_dynamic_graph_is_bounded_at_the_sizes_it_is_served_at() {
    let dir = tempfile::tempdir().unwrap();
    let bounded = dir.path().join("bounded.onnx");
    run_python(&[
        "-c".as_ref(),
        "import onnx, sys\n\
         m = onnx.load(sys.argv[1])\n\
         [p for p in m.metadata_props if p.key == 'codetr.format_version'][0].value = '4'\n\
         p = m.metadata_props.add(); p.key = 'codetr.max_batch_at'\n\
         p.value = '[{\"input_size\":[48,80],\"max_batch\":3},{\"input_size\":[80,48],\"max_batch\":2}]'\n\
         onnx.save(m, sys.argv[2])"
            .as_ref(),
        fixtures().join("micro-letterbox-dynamic.onnx").as_os_str(),
        bounded.as_os_str(),
    ]);
    let s = Server::start_model(
        &bounded,
        &["--max-batch-size", "4", "--input-size", "48x80,80x48"],
        &[],
    );
    let m = s.get("/v1/models").unwrap().json();
    assert_eq!(m["metadata"]["format_version"], 4, "{m}");
    assert_eq!(m["batching"]["batch_sizes"], json!([1, 2]));
    assert_eq!(m["batching"]["over_graph_bound"], json!([4]));
    assert_eq!(m["batching"]["graph_max_batch"], 2);
    assert!(s.log().contains("BATCH SIZE DROPPED"), "{}", s.log());
    assert!(!s.log().contains("batch=4"), "batch 4 ran:\n{}", s.log());
    assert!(!s.log().contains("NO BATCH BOUND"), "{}", s.log());
    let r = s.post("/v1/detect", "image/jpeg", &sample_jpeg());
    assert_eq!(r.status, 200, "{}", r.text());
    let other = Server::start_model(
        &bounded,
        &["--max-batch-size", "4", "--input-size", "64x64"],
        &[],
    );
    let m = other.get("/v1/models").unwrap().json();
    assert_eq!(m["batching"]["batch_sizes"], json!([1, 2, 4]));
    assert_eq!(m["batching"]["graph_max_batch"], Value::Null);
    assert!(
        other.log().contains("NO BATCH BOUND for input size 64x64"),
        "{}",
        other.log()
    );
}

/// A letterbox graph (`codetr-export --resize letterbox`, format version 2): the server keeps
/// the aspect ratio, pads below or right, and feeds each image's valid size. An image that
/// already has its letterbox size is not resampled, so the server's answer must equal ONNX
/// Runtime (Python) on the same canvas with `valid_sizes` given by hand.
#[test]
fn letterbox_graph_is_served_with_padding_and_valid_sizes() {
    let model = fixtures().join("micro-letterbox.onnx");
    // 64 wide × 32 high into the 64² input: letterbox size 32 × 64, the lower half padding
    let (w, h) = (64u32, 32u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 8) as u8, ((x * 7 + y * 13) % 256) as u8])
    });
    let png = encode(
        &image::DynamicImage::ImageRgb8(img.clone()),
        image::ImageFormat::Png,
    );
    let s = Server::start_model(&model, &["--score-threshold", "0"], &[]);
    let info = s.get("/v1/models").unwrap().json();
    assert_eq!(info["metadata"]["resize"], "letterbox", "{info}");
    assert_eq!(info["metadata"]["format_version"], 2);
    let r = s.post("/v1/detect", "image/png", &png);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    let dets = detections(&got, 0);
    assert!(!dets.is_empty());

    let mut canvas = vec![0u8; 64 * 64 * 3];
    canvas[..img.as_raw().len()].copy_from_slice(img.as_raw());
    let inputs = json!({
        "images": {"dtype": "uint8", "shape": [1, 64, 64, 3], "data": canvas},
        "orig_sizes": {"dtype": "int64", "shape": [1, 2], "data": [h, w]},
        "valid_sizes": {"dtype": "int64", "shape": [1, 2], "data": [h, w]},
    });
    let want = onnx_run(&model, &inputs);
    assert_eq!(want["metadata"]["codetr.resize"], "letterbox");
    let (scores, labels, boxes) = (
        output(&want, "scores"),
        output(&want, "labels"),
        output(&want, "boxes"),
    );
    assert_eq!(dets.len(), scores.len());
    for (i, d) in dets.iter().enumerate() {
        assert_eq!(d["class_id"].as_f64().unwrap(), labels[i], "detection {i}");
        assert!((d["score"].as_f64().unwrap() - scores[i]).abs() <= 1e-5);
        let b = &d["box"];
        for (k, key) in ["x1", "y1", "x2", "y2"].iter().enumerate() {
            assert!((b[*key].as_f64().unwrap() - boxes[4 * i + k]).abs() <= 1e-3);
        }
    }
    // The stretch graph of the same weights reads the image differently: the padding and
    // the masks are what make the letterbox answer.
    let plain = Server::start(&["--score-threshold", "0"]);
    let other = plain.post("/v1/detect", "image/png", &png).json();
    let top = |j: &Value| detections(j, 0)[0]["score"].as_f64().unwrap();
    assert!((top(&other) - top(&got)).abs() > 1e-6);
}

/// A dynamic-size letterbox graph served at a landscape and a portrait size
/// (`--input-size 48x80,80x48`): each image goes to the size it is shrunk least in, images of
/// both orientations in one request run in separate batches, and each answer equals ONNX
/// Runtime (Python) on that image's canvas built by hand. Both images already have their
/// letterbox size there (scale 1, no resampling), so the canvases are exact. Several sizes for
/// a fixed or a stretch graph are refused at startup.
#[test]
fn several_input_sizes_route_each_image_by_orientation() {
    let model = fixtures().join("micro-letterbox-dynamic.onnx");
    let (fixed, stretch) = (
        fixtures().join("micro-letterbox.onnx"),
        fixtures().join("micro-dynamic.onnx"),
    );
    let cases: [(Vec<&str>, &str); 2] = [
        (
            vec![
                "--model",
                fixed.to_str().unwrap(),
                "--input-size",
                "48x80,80x48",
                "--bind",
                "127.0.0.1:0",
            ],
            "fixed at 64x64; input_size 48x80,80x48 differs",
        ),
        (
            vec![
                "--model",
                stretch.to_str().unwrap(),
                "--input-size",
                "48x80,80x48",
                "--bind",
                "127.0.0.1:0",
            ],
            "need a letterbox graph",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = run_to_exit(&args);
        assert!(code.is_some_and(|c| c != 0), "{args:?} exited {code:?}");
        assert!(err.contains(want), "{args:?}: {want:?} not in\n{err}");
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    }
    let picture = |w: u32, h: u32, seed: u32| {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                ((x * 5 + seed) % 256) as u8,
                ((y * 3 + seed * 7) % 256) as u8,
                ((x * 11 + y * 13 + seed) % 256) as u8,
            ])
        })
    };
    // [h, w] canvases; a landscape image 80 wide × 40 high, a portrait one 40 × 80
    let (landscape_hw, portrait_hw) = ([48u32, 80u32], [80u32, 48u32]);
    let land = picture(80, 40, 1);
    let port = picture(40, 80, 2);
    let png = |img: &image::RgbImage| {
        encode(
            &image::DynamicImage::ImageRgb8(img.clone()),
            image::ImageFormat::Png,
        )
    };
    let s = Server::start_model(
        &model,
        &[
            "--score-threshold",
            "0",
            "--input-size",
            "48x80,80x48",
            "--max-batch-size",
            "2",
        ],
        &[],
    );
    let info = s.get("/v1/models").unwrap().json();
    assert_eq!(info["input_sizes"], json!([[48, 80], [80, 48]]), "{info}");
    assert_eq!(info["metadata"]["input_size"], Value::Null);
    // The portrait image first, the landscape second, in one request.
    let body = json!({"images": [b64(&png(&port)), b64(&png(&land))]}).to_string();
    let r = s.post("/v1/detect", "application/json", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    for (i, (img, [ch, cw])) in [(&port, portrait_hw), (&land, landscape_hw)]
        .into_iter()
        .enumerate()
    {
        let (w, h) = img.dimensions();
        let mut canvas = vec![0u8; (ch * cw * 3) as usize];
        for (row, line) in img.as_raw().chunks_exact(w as usize * 3).enumerate() {
            let at = row * cw as usize * 3;
            canvas[at..at + line.len()].copy_from_slice(line);
        }
        let inputs = json!({
            "images": {"dtype": "uint8", "shape": [1, ch, cw, 3], "data": canvas},
            "orig_sizes": {"dtype": "int64", "shape": [1, 2], "data": [h, w]},
            "valid_sizes": {"dtype": "int64", "shape": [1, 2], "data": [h, w]},
        });
        let want = onnx_run(&model, &inputs);
        let (scores, labels, boxes) = (
            output(&want, "scores"),
            output(&want, "labels"),
            output(&want, "boxes"),
        );
        let dets = detections(&got, i);
        assert_eq!(dets.len(), scores.len(), "image {i}");
        for (k, d) in dets.iter().enumerate() {
            assert_eq!(
                d["class_id"].as_f64().unwrap(),
                labels[k],
                "image {i} det {k}"
            );
            assert!(
                (d["score"].as_f64().unwrap() - scores[k]).abs() <= 1e-5,
                "image {i} det {k}"
            );
            let b = &d["box"];
            for (c, key) in ["x1", "y1", "x2", "y2"].iter().enumerate() {
                assert!((b[*key].as_f64().unwrap() - boxes[4 * k + c]).abs() <= 1e-3);
            }
        }
    }
    let by_input = |hw: &str| {
        s.get("/metrics")
            .unwrap()
            .text()
            .lines()
            .find(|l| {
                l.starts_with("codetr_images_by_input_size_total")
                    && l.contains(&format!("input_size=\"{hw}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(by_input("48x80"), Some(1.0));
    assert_eq!(by_input("80x48"), Some(1.0));
    // Two runs: the images were not batched together.
    assert_eq!(s.metric("codetr_execution_count_total"), 2.0);
    // Served at the landscape size alone, the portrait image is shrunk (scale 0.6) and the
    // answer differs: the routing is what gives it its own size.
    let one = Server::start_model(
        &model,
        &["--score-threshold", "0", "--input-size", "48x80"],
        &[],
    );
    let alone = one.post("/v1/detect", "image/png", &png(&port)).json();
    let top = |j: &Value, i: usize| detections(j, i)[0]["score"].as_f64().unwrap();
    assert!((top(&alone, 0) - top(&got, 0)).abs() > 1e-6);
}

/// A letterbox graph with keep-ratio limits (`codetr-export --letterbox-limits`, format version
/// 3, the official `(1333, 800)` rule at micro scale): the server caps the scale at the limits,
/// not at the canvas. A 64×32 image in the 64² canvas with limits [16, 48] (short, long) takes
/// 32×16 (scale ½: short side 32 → 16), where the canvas alone would give 64×32. A constant
/// image resamples exactly, so the answer must equal ONNX Runtime on the canvas built by hand
/// with the limited valid size, and differ from the unlimited one.
#[test]
fn letterbox_limits_cap_the_scale_as_the_metadata_says() {
    let dir = tempfile::tempdir().unwrap();
    let limited = dir.path().join("limited.onnx");
    let base = fixtures().join("micro-letterbox.onnx");
    run_python(&[
        "-c".as_ref(),
        "import onnx, sys\n\
         m = onnx.load(sys.argv[1])\n\
         [p for p in m.metadata_props if p.key == 'codetr.format_version'][0].value = '3'\n\
         p = m.metadata_props.add(); p.key = 'codetr.letterbox_limits'; p.value = '[16,48]'\n\
         onnx.save(m, sys.argv[2])"
            .as_ref(),
        base.as_os_str(),
        limited.as_os_str(),
    ]);
    let (w, h, rgb) = (64u32, 32u32, [90u8, 160, 210]);
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let png = encode(
        &image::DynamicImage::ImageRgb8(img),
        image::ImageFormat::Png,
    );
    let s = Server::start_model(&limited, &["--score-threshold", "0"], &[]);
    let info = s.get("/v1/models").unwrap().json();
    assert_eq!(info["metadata"]["format_version"], 3, "{info}");
    assert_eq!(info["metadata"]["letterbox_limits"], json!([16, 48]));
    let r = s.post("/v1/detect", "image/png", &png);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = detections(&r.json(), 0).clone();
    assert!(!got.is_empty());

    let ort = |[vh, vw]: [u32; 2]| -> (Vec<f64>, Vec<f64>) {
        let mut canvas = vec![0u8; 64 * 64 * 3];
        for y in 0..vh as usize {
            for x in 0..vw as usize {
                canvas[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3].copy_from_slice(&rgb);
            }
        }
        let inputs = json!({
            "images": {"dtype": "uint8", "shape": [1, 64, 64, 3], "data": canvas},
            "orig_sizes": {"dtype": "int64", "shape": [1, 2], "data": [h, w]},
            "valid_sizes": {"dtype": "int64", "shape": [1, 2], "data": [vh, vw]},
        });
        let want = onnx_run(&limited, &inputs);
        (output(&want, "scores"), output(&want, "boxes"))
    };
    let (scores, boxes) = ort([16, 32]);
    assert_eq!(got.len(), scores.len());
    for (i, d) in got.iter().enumerate() {
        assert!(
            (d["score"].as_f64().unwrap() - scores[i]).abs() <= 1e-5,
            "detection {i}"
        );
        for (k, key) in ["x1", "y1", "x2", "y2"].iter().enumerate() {
            assert!((d["box"][*key].as_f64().unwrap() - boxes[4 * i + k]).abs() <= 1e-3);
        }
    }
    // without the limits the same image fills 32×64 of the canvas: another answer
    let (unlimited, _) = ort([32, 64]);
    assert!((unlimited[0] - scores[0]).abs() > 1e-6);
}
