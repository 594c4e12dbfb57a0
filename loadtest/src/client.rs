//! Requests: the images to send, the body form, and a pooled keep-alive HTTP/1.1 client.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper::header::CONTENT_TYPE;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::{LoadError, Result};

/// How an image travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// The image bytes as the body, `Content-Type: image/…` (the fast path).
    Raw,
    /// `multipart/form-data` with one `image` part.
    Multipart,
}

/// One ready-to-send body.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The body.
    pub body: Bytes,
    /// Its content type.
    pub content_type: String,
}

const BOUNDARY: &str = "codetrLoadtestBoundary0123456789";

/// Reads every JPEG/PNG/WebP in `dir` (sorted by name) into bodies of the given form.
pub fn load_images(dir: &Path, form: Form) -> Result<Vec<Payload>> {
    let io = |e: std::io::Error| LoadError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for p in files {
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let ct = match ext.as_deref() {
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("png") => "image/png",
            Some("webp") => "image/webp",
            _ => continue,
        };
        let bytes = std::fs::read(&p).map_err(|e| LoadError::Io {
            path: p.clone(),
            message: e.to_string(),
        })?;
        out.push(match form {
            Form::Raw => Payload {
                body: Bytes::from(bytes),
                content_type: ct.to_owned(),
            },
            Form::Multipart => {
                let mut b = format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"img\"\r\nContent-Type: {ct}\r\n\r\n"
                )
                .into_bytes();
                b.extend_from_slice(&bytes);
                b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
                Payload {
                    body: Bytes::from(b),
                    content_type: format!("multipart/form-data; boundary={BOUNDARY}"),
                }
            }
        });
    }
    if out.is_empty() {
        return Err(LoadError::Config(format!(
            "{}: no .jpg/.jpeg/.png/.webp files",
            dir.display()
        )));
    }
    Ok(out)
}

/// Refuses targets that are not on this machine unless `allow_remote`: a load test is a
/// denial of service to anyone else's server.
pub fn check_target(url: &Uri, allow_remote: bool) -> Result<()> {
    if url.scheme_str() != Some("http") {
        return Err(LoadError::Config(format!(
            "{url}: only http:// targets are supported"
        )));
    }
    let host = url.host().unwrap_or("");
    let local = matches!(host, "localhost" | "[::1]" | "::1")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !local && !allow_remote {
        return Err(LoadError::Config(format!(
            "{url}: {host} is not a loopback address; pass --allow-remote to load a remote server"
        )));
    }
    Ok(())
}

/// Outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP status came back (body fully read).
    Status(u16),
    /// No answer within the timeout.
    Timeout,
    /// Connection refused/reset or another transport error.
    Transport,
}

/// A keep-alive HTTP/1.1 client (connections pooled per host).
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Http {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(4096)
            .build(conn);
        Self { client, timeout }
    }

    /// POSTs `p` to `uri` and reads the whole response.
    pub async fn post(&self, uri: &Uri, p: &Payload) -> Outcome {
        let req = match hyper::Request::post(uri.clone())
            .header(CONTENT_TYPE, &p.content_type)
            .body(Full::new(p.body.clone()))
        {
            Ok(r) => r,
            Err(_) => return Outcome::Transport,
        };
        let fut = async {
            let resp = self.client.request(req).await.ok()?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await.ok()?;
            Some(status)
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Some(s)) => Outcome::Status(s),
            Ok(None) => Outcome::Transport,
            Err(_) => Outcome::Timeout,
        }
    }

    /// GETs `uri` as text (for `/metrics`); `None` when it is not there.
    pub async fn get_text(&self, uri: &Uri) -> Option<String> {
        let req = hyper::Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .ok()?
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        String::from_utf8(body.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_the_flag() {
        for ok in [
            "http://127.0.0.1:8080/",
            "http://localhost:1/",
            "http://[::1]:80/",
            "http://127.5.0.1/",
        ] {
            check_target(&ok.parse().unwrap(), false).unwrap();
        }
        for bad in [
            "http://10.0.0.1:8080/",
            "http://example.com/",
            "http://0.0.0.0/",
        ] {
            let e = check_target(&bad.parse().unwrap(), false).unwrap_err();
            assert!(e.to_string().contains("--allow-remote"), "{e}");
            check_target(&bad.parse().unwrap(), true).unwrap();
        }
        assert!(check_target(&"https://127.0.0.1/".parse().unwrap(), true).is_err());
    }
}
