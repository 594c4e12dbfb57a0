//! The crate's one error type. Startup errors end the process with a message; request errors
//! become JSON `{"error": {"code", "message"}}` with the status [`ServeError::status`] gives
//! (every status here is documented in `/openapi.json`; a test checks that).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Result with [`ServeError`].
pub type Result<T, E = ServeError> = std::result::Result<T, E>;

/// Everything that can go wrong, at startup or per request.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    // ---- startup ----
    /// Bad configuration value or file.
    #[error("configuration: {0}")]
    Config(String),
    /// The model file is missing, unreadable, not ONNX, or breaks the graph contract.
    #[error("model: {0}")]
    Model(String),
    /// ONNX Runtime could not be loaded or set up.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// I/O outside a request (binding the socket, reading the token file).
    #[error("{0}")]
    Io(String),

    // ---- per request ----
    /// A parameter or the request's structure is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token (401).
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// No such route (404).
    #[error("no route {0}")]
    NotFound(String),
    /// Route exists, method does not (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Body larger than `limits.max_body_bytes` (413).
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// Content type or image format the server does not take (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// An image that does not decode (422).
    #[error("{0}")]
    InvalidImage(String),
    /// An image with more pixels than `limits.max_pixels`, detected from its header (422).
    #[error("image is {width}×{height} = {pixels} pixels; the limit is {limit}")]
    TooManyPixels {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// width × height.
        pixels: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The batcher's queue is full (503 + Retry-After).
    #[error("the inference queue is full ({0} images waiting); retry later")]
    QueueFull(usize),
    /// The model is not loaded and warmed yet, or the server is shutting down (503).
    #[error("{0}")]
    Unavailable(String),
    /// The request's deadline passed before its images ran (504).
    #[error("the request deadline of {0} ms passed before inference finished")]
    DeadlineExceeded(u64),
    /// A bug or an inference failure (500).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The contract's preprocessing errors, on the statuses the API documents.
impl From<codetr_model::Error> for ServeError {
    fn from(e: codetr_model::Error) -> Self {
        match e {
            codetr_model::Error::UnsupportedImage(m) => ServeError::UnsupportedMediaType(m),
            codetr_model::Error::InvalidImage(m) => ServeError::InvalidImage(m),
            codetr_model::Error::TooManyPixels {
                width,
                height,
                pixels,
                limit,
            } => ServeError::TooManyPixels {
                width,
                height,
                pixels,
                limit,
            },
            other => ServeError::Internal(other.to_string()),
        }
    }
}

impl ServeError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::Unauthorized => StatusCode::UNAUTHORIZED,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ServeError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServeError::InvalidImage(_) | ServeError::TooManyPixels { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ServeError::QueueFull(_) | ServeError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServeError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Config(_)
            | ServeError::Model(_)
            | ServeError::Runtime(_)
            | ServeError::Io(_)
            | ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ServeError::BadRequest(_) => "bad_request",
            ServeError::Unauthorized => "unauthorized",
            ServeError::NotFound(_) => "not_found",
            ServeError::MethodNotAllowed => "method_not_allowed",
            ServeError::PayloadTooLarge { .. } => "payload_too_large",
            ServeError::UnsupportedMediaType(_) => "unsupported_media_type",
            ServeError::InvalidImage(_) => "invalid_image",
            ServeError::TooManyPixels { .. } => "too_many_pixels",
            ServeError::QueueFull(_) => "queue_full",
            ServeError::Unavailable(_) => "unavailable",
            ServeError::DeadlineExceeded(_) => "deadline_exceeded",
            ServeError::Config(_)
            | ServeError::Model(_)
            | ServeError::Runtime(_)
            | ServeError::Io(_)
            | ServeError::Internal(_) => "internal",
        }
    }

    /// Every (status, code) pair a request can be answered with, for the OpenAPI test.
    pub const HTTP_CODES: &'static [(u16, &'static str)] = &[
        (400, "bad_request"),
        (401, "unauthorized"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (413, "payload_too_large"),
        (415, "unsupported_media_type"),
        (422, "invalid_image"),
        (422, "too_many_pixels"),
        (503, "queue_full"),
        (503, "unavailable"),
        (504, "deadline_exceeded"),
        (500, "internal"),
    ];
}

/// Seconds a client should wait after a 503.
pub const RETRY_AFTER_S: u32 = 1;

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.code(), "{self}");
        }
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        if matches!(self, ServeError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"codetr\""),
            );
        }
        resp
    }
}
