//! Test harness: runs the real `codetr-serve` binary on the committed micro graph and talks
//! HTTP/1.1 to it over a plain TcpStream (so malformed requests can be sent exactly).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn micro_model() -> PathBuf {
    fixtures().join("micro.onnx")
}

pub fn sample_jpeg() -> Vec<u8> {
    std::fs::read(fixtures().join("sample.jpg")).expect("sample.jpg")
}

pub fn python() -> String {
    std::env::var("CODETR_PYTHON").unwrap_or_else(|_| {
        panic!("CODETR_PYTHON is not set: run `make test` (it creates .venv with onnxruntime)")
    })
}

/// The ONNX Runtime library of the wheel in CODETR_PYTHON's environment (what
/// scripts/install-ort.sh installs for the server), or ORT_DYLIB_PATH when set.
pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let out = run_python(&[
        "-c".as_ref(),
        "import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*')))[0])".as_ref(),
    ]);
    PathBuf::from(String::from_utf8_lossy(&out).trim())
}

/// Runs CODETR_PYTHON with `args`; panics with its stderr unless it succeeds; its stdout.
pub fn run_python(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new(python())
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on the micro model with `args` and waits until /readyz says 200.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(args, &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_model(&micro_model(), args, env)
    }

    /// Starts the server on `model` with `args` and waits until /readyz says 200.
    pub fn start_model(model: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut all = vec!["--model", model.to_str().unwrap(), "--bind", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let (child, addr, log) =
            spawn(&all, env).unwrap_or_else(|log| panic!("server did not start:\n{log}"));
        let s = Server { child, addr, log };
        let t = Instant::now();
        loop {
            if let Ok(r) = s.get("/readyz")
                && r.status == 200
            {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "not ready in 60 s:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str) -> std::io::Result<Resp> {
        http(self.addr, "GET", path, &[], &[])
    }

    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Resp {
        http(
            self.addr,
            "POST",
            path,
            &[("Content-Type", content_type)],
            body,
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log()))
    }

    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    /// The value of an unlabelled counter/gauge, or the sum over all label sets.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").unwrap().text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns the binary; returns once it logs its address, or its log if it exits first.
pub fn spawn(
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(Child, SocketAddr, Arc<Mutex<String>>), String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_codetr-serve"));
    cmd.args(args)
        .env("ORT_DYLIB_PATH", ort_library())
        .env("RUST_LOG", "info,ort=warn")
        .env_remove("CODETR_SERVE_AUTH_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn codetr-serve");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(a.trim().to_owned());
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }
    let t = Instant::now();
    loop {
        if let Ok(a) = rx.try_recv() {
            return Ok((child, a.parse().unwrap(), log));
        }
        if let Ok(Some(_)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            return Err(log.lock().unwrap().clone());
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            return Err(format!("no address in 60 s:\n{}", log.lock().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary to completion; returns (exit code, stderr).
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_codetr-serve"))
        .args(args)
        .env("ORT_DYLIB_PATH", ort_library())
        .env_remove("CODETR_SERVE_AUTH_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts a JSON error with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        let j = self.json();
        assert_eq!(j["error"]["code"], code, "{j}");
        assert!(
            j["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{j}"
        );
    }
}

/// One HTTP/1.1 request with `Connection: close`; the body is written from a second thread so
/// a server that answers before reading everything (413) does not deadlock the test.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    http_raw(addr, head.as_bytes(), body)
}

pub fn http_raw(addr: SocketAddr, head: &[u8], body: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(head)?;
    let mut w = s.try_clone()?;
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        for chunk in body.chunks(1 << 16) {
            if w.write_all(chunk).is_err() {
                break;
            }
        }
    });
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let _ = writer.join();
    if raw.is_empty() {
        read?;
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap_or("").trim(), 16)
                    .map_err(|_| bad("chunk size"))?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A multipart/form-data body: (field name, filename, bytes) parts.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "codetrTestBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}
