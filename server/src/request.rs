//! Turning a `POST /v1/detect` request into images and parameters.
//!
//! Three body forms: a raw `image/jpeg|png|webp` body (the fast path), `multipart/form-data`
//! with `image`/`file` parts and optional parameter fields, and JSON `{"image": base64}` or
//! `{"images": [base64, …]}` with optional parameter members. Parameters may also come in the
//! query string; body values win over query values.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{HeaderMap, header};
use base64::Engine;
use serde::Deserialize;

use crate::error::{Result, ServeError};

/// One entry of `classes`: a class index or a class name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ClassRef {
    /// Index into the model's classes.
    Id(u64),
    /// A class name, exactly as in the model's metadata.
    Name(String),
}

/// Parameters as sent, not yet checked against the model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawParams {
    /// Keep detections scoring at least this.
    pub score_threshold: Option<f64>,
    /// Keep at most this many detections per image.
    pub max_detections: Option<u64>,
    /// Keep only these classes.
    pub classes: Option<Vec<ClassRef>>,
    /// The request's deadline in ms.
    pub timeout_ms: Option<u64>,
}

impl RawParams {
    /// `other`'s values where it has them, else ours.
    fn overridden_by(self, other: RawParams) -> RawParams {
        RawParams {
            score_threshold: other.score_threshold.or(self.score_threshold),
            max_detections: other.max_detections.or(self.max_detections),
            classes: other.classes.or(self.classes),
            timeout_ms: other.timeout_ms.or(self.timeout_ms),
        }
    }

    /// Sets one parameter from its text form (query string or multipart field). Returns false
    /// for a name that is not a parameter.
    fn set_text(&mut self, name: &str, value: &str) -> Result<bool> {
        let bad = |what: &str| {
            ServeError::BadRequest(format!("parameter `{name}`: {what}, got {value:?}"))
        };
        match name {
            "score_threshold" => {
                self.score_threshold =
                    Some(value.trim().parse().map_err(|_| bad("expected a number"))?)
            }
            "max_detections" => {
                self.max_detections = Some(
                    value
                        .trim()
                        .parse()
                        .map_err(|_| bad("expected a positive integer"))?,
                )
            }
            "timeout_ms" => {
                self.timeout_ms = Some(
                    value
                        .trim()
                        .parse()
                        .map_err(|_| bad("expected a positive integer"))?,
                )
            }
            "classes" => {
                let list = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| match s.parse::<u64>() {
                        Ok(i) => ClassRef::Id(i),
                        Err(_) => ClassRef::Name(s.to_owned()),
                    })
                    .collect();
                self.classes = Some(list);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Parses the query string's parameters; unknown names are refused so typos do not pass
/// silently.
pub fn parse_query(query: Option<&str>) -> Result<RawParams> {
    let mut p = RawParams::default();
    let Some(q) = query else { return Ok(p) };
    for pair in q.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k)?, percent_decode(v)?);
        if !p.set_text(&k, &v)? {
            return Err(ServeError::BadRequest(format!(
                "unknown query parameter `{k}` (known: score_threshold, max_detections, classes, timeout_ms)"
            )));
        }
    }
    Ok(p)
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ServeError::BadRequest(format!("bad percent-encoding in {s:?}"))
                    })?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ServeError::BadRequest(format!("query {s:?} is not UTF-8")))
}

/// What a detect request carries.
#[derive(Debug)]
pub struct Parsed {
    /// Encoded images, in request order.
    pub images: Vec<Bytes>,
    /// Query parameters overridden by body parameters.
    pub params: RawParams,
    /// Body bytes received.
    pub body_bytes: usize,
}

/// The JSON body form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody {
    image: Option<String>,
    images: Option<Vec<String>>,
    score_threshold: Option<f64>,
    max_detections: Option<u64>,
    classes: Option<JsonClasses>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonClasses {
    List(Vec<ClassRef>),
    One(ClassRef),
}

fn content_type(headers: &HeaderMap) -> Result<String> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Err(ServeError::UnsupportedMediaType(
            "no Content-Type; send image/jpeg, image/png, image/webp, multipart/form-data or application/json".into(),
        ));
    };
    let v = v
        .to_str()
        .map_err(|_| ServeError::UnsupportedMediaType("Content-Type is not ASCII".into()))?;
    Ok(v.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase())
}

/// Reads a whole body, refusing more than `limit` bytes (by Content-Length first, so an honest
/// oversized upload is refused before it is read).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ServeError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ServeError::PayloadTooLarge { limit }
        } else {
            ServeError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("length limit exceeded") {
            return true;
        }
        cur = err.source();
    }
    false
}

fn b64(what: &str, s: &str) -> Result<Bytes> {
    // Tolerate a data URL prefix (`data:image/png;base64,…`), what browsers produce.
    let s = s.split_once(";base64,").map_or(s, |(_, d)| d);
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map(Bytes::from)
        .map_err(|e| ServeError::BadRequest(format!("{what} is not valid base64: {e}")))
}

/// Parses a detect request of any accepted form. `limit` is the body size limit.
pub async fn parse(req: Request, limit: usize) -> Result<Parsed> {
    let query = parse_query(req.uri().query())?;
    let ct = content_type(req.headers())?;
    match ct.as_str() {
        "image/jpeg" | "image/jpg" | "image/png" | "image/webp" => {
            let (parts, body) = req.into_parts();
            let bytes = read_body(&parts.headers, body, limit).await?;
            Ok(Parsed {
                body_bytes: bytes.len(),
                images: vec![bytes],
                params: query,
            })
        }
        "application/json" => {
            let (parts, body) = req.into_parts();
            let bytes = read_body(&parts.headers, body, limit).await?;
            let j: JsonBody = serde_json::from_slice(&bytes)
                .map_err(|e| ServeError::BadRequest(format!("invalid JSON body: {e}")))?;
            let mut images = Vec::new();
            if let Some(s) = &j.image {
                images.push(b64("`image`", s)?);
            }
            for (i, s) in j.images.iter().flatten().enumerate() {
                images.push(b64(&format!("`images[{i}]`"), s)?);
            }
            if j.image.is_some() && j.images.is_some() {
                return Err(ServeError::BadRequest(
                    "give `image` or `images`, not both".into(),
                ));
            }
            let body = RawParams {
                score_threshold: j.score_threshold,
                max_detections: j.max_detections,
                classes: j.classes.map(|c| match c {
                    JsonClasses::List(v) => v,
                    JsonClasses::One(ClassRef::Name(s)) => {
                        let mut p = RawParams::default();
                        // A string is the same comma-separated list the query takes.
                        let _ = p.set_text("classes", &s);
                        p.classes.unwrap_or_default()
                    }
                    JsonClasses::One(id) => vec![id],
                }),
                timeout_ms: j.timeout_ms,
            };
            Ok(Parsed {
                body_bytes: bytes.len(),
                images,
                params: query.overridden_by(body),
            })
        }
        "multipart/form-data" => {
            let mut mp = Multipart::from_request(req, &())
                .await
                .map_err(|e| ServeError::BadRequest(format!("multipart: {}", e.body_text())))?;
            let mut images = Vec::new();
            let mut body = RawParams::default();
            let mut total = 0usize;
            let mp_err = |e: axum::extract::multipart::MultipartError| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ServeError::PayloadTooLarge { limit }
                } else {
                    ServeError::BadRequest(format!("multipart: {}", e.body_text()))
                }
            };
            while let Some(field) = mp.next_field().await.map_err(mp_err)? {
                let name = field.name().unwrap_or("").to_owned();
                let data = field.bytes().await.map_err(mp_err)?;
                total += data.len();
                if total > limit {
                    return Err(ServeError::PayloadTooLarge { limit });
                }
                match name.as_str() {
                    "image" | "file" | "image[]" => images.push(data),
                    other => {
                        let text = std::str::from_utf8(&data).map_err(|_| {
                            ServeError::BadRequest(format!(
                                "multipart field `{other}` is not UTF-8 text"
                            ))
                        })?;
                        if !body.set_text(other, text)? {
                            return Err(ServeError::BadRequest(format!(
                                "unknown multipart field `{other}` (images go in `image` or `file` parts)"
                            )));
                        }
                    }
                }
            }
            Ok(Parsed {
                body_bytes: total,
                images,
                params: query.overridden_by(body),
            })
        }
        other if other.starts_with("image/") => Err(ServeError::UnsupportedMediaType(format!(
            "{other} is not supported; send image/jpeg, image/png or image/webp"
        ))),
        other => Err(ServeError::UnsupportedMediaType(format!(
            "Content-Type {other:?} is not supported; send an image (image/jpeg|png|webp), \
             multipart/form-data or application/json"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let p = parse_query(Some(
            "score_threshold=0.5&max_detections=3&classes=cat,%202,dog+x",
        ))
        .unwrap();
        assert_eq!(p.score_threshold, Some(0.5));
        assert_eq!(p.max_detections, Some(3));
        assert_eq!(
            p.classes,
            Some(vec![
                ClassRef::Name("cat".into()),
                ClassRef::Id(2),
                ClassRef::Name("dog x".into())
            ])
        );
        assert!(parse_query(Some("max_detections=-1")).is_err());
        assert!(parse_query(Some("score_threshold=abc")).is_err());
        assert!(parse_query(Some("scor_threshold=0.1")).is_err());
        assert!(parse_query(Some("classes=%zz")).is_err());
        assert_eq!(parse_query(None).unwrap(), RawParams::default());
    }
}
