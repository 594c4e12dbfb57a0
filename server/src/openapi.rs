//! The OpenAPI 3.0 description served at `/openapi.json`.
//!
//! Written out by hand rather than derived: the detect endpoint takes three body forms and
//! every error status must be listed, which derive macros express poorly. Two tests keep it
//! honest: every (status, code) pair of [`ServeError::HTTP_CODES`] that a route can return is
//! documented, and schemathesis (CI) finds no undocumented status or schema violation.
//!
//! [`ServeError::HTTP_CODES`]: crate::error::ServeError::HTTP_CODES

use serde_json::{Value, json};

fn err_ref(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn unavailable(description: &str) -> Value {
    let mut v = err_ref(description);
    v["headers"] = json!({
        "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
    });
    v
}

/// Statuses every `/v1/*` route can answer besides its own.
fn v1_common(mut responses: Value) -> Value {
    let r = responses.as_object_mut().expect("object");
    r.insert("401".into(), {
        let mut v = err_ref("Missing or wrong bearer token (only when the server has one).");
        v["headers"] = json!({"WWW-Authenticate": {"schema": {"type": "string"}}});
        v
    });
    r.insert("405".into(), err_ref("Method not allowed."));
    r.insert("500".into(), err_ref("A bug or an inference failure."));
    responses
}

/// The spec.
pub fn spec() -> Value {
    let params = json!([
        {"name": "score_threshold", "in": "query", "required": false,
         "description": "Keep detections scoring at least this (default from the server config).",
         "schema": {"type": "number", "minimum": 0, "maximum": 1}},
        {"name": "max_detections", "in": "query", "required": false,
         "description": "Keep at most this many detections per image (≤ the graph's top-k).",
         "schema": {"type": "integer", "minimum": 1}},
        {"name": "classes", "in": "query", "required": false,
         "description": "Comma-separated class names or ids to keep.",
         "schema": {"type": "string"}},
        {"name": "timeout_ms", "in": "query", "required": false,
         "description": "Deadline for this request in ms (capped at the server's).",
         "schema": {"type": "integer", "minimum": 1}}
    ]);
    let binary = json!({"schema": {"type": "string", "format": "binary"}});
    let detect_responses = v1_common(json!({
        "200": {"description": "Detections per image.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DetectResponse"}}}},
        "400": err_ref("A parameter or the request's structure is invalid."),
        "413": err_ref("The body is larger than the server's limit."),
        "415": err_ref("Content type or image format not supported (send JPEG, PNG or WebP)."),
        "422": err_ref("An image does not decode (`invalid_image`) or has too many pixels (`too_many_pixels`)."),
        "503": unavailable("The queue is full (`queue_full`), or the model is warming up / the server is shutting down (`unavailable`)."),
        "504": err_ref("The request's deadline passed before inference finished.")
    }));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "codetr-serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Co-DETR object detection over ONNX Runtime. Boxes are xyxy in pixels of the EXIF-corrected original image."
        },
        "paths": {
            "/v1/detect": {"post": {
                "operationId": "detect",
                "summary": "Detect objects in one or more images.",
                "parameters": params,
                "requestBody": {"required": true, "content": {
                    "image/jpeg": binary, "image/png": binary, "image/webp": binary,
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": "One or more image parts (`file` is accepted too)."},
                        "score_threshold": {"type": "number", "minimum": 0, "maximum": 1},
                        "max_detections": {"type": "integer", "minimum": 1},
                        "classes": {"type": "string"},
                        "timeout_ms": {"type": "integer", "minimum": 1}
                    }}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/DetectJson"}}
                }},
                "responses": detect_responses
            }},
            "/v1/models": {"get": {
                "operationId": "models",
                "summary": "The served model: metadata, provider, batching.",
                "responses": v1_common(json!({"200": {"description": "The model.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Models"}}}},
                    "503": unavailable("The model is still loading.")}))
            }},
            "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness.",
                "responses": {"200": {"description": "The process is up.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
                    "405": err_ref("Method not allowed.")}}},
            "/readyz": {"get": {"operationId": "readyz",
                "summary": "Readiness: the model is loaded and warmed at every batch size.",
                "responses": {"200": {"description": "Ready.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
                    "405": err_ref("Method not allowed."),
                    "503": unavailable("Warming up or shutting down.")}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics.",
                "responses": {"200": {"description": "Text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "405": err_ref("Method not allowed.")}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document.",
                "responses": {"200": {"description": "OpenAPI 3.0.",
                    "content": {"application/json": {"schema": {"type": "object"}}}},
                    "405": err_ref("Method not allowed.")}}},
            "/": {"get": {"operationId": "demo", "summary": "Demo page: upload an image, see the boxes.",
                "responses": {"200": {"description": "HTML.",
                    "content": {"text/html": {"schema": {"type": "string"}}}},
                    "405": err_ref("Method not allowed.")}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string", "enum": crate::error::ServeError::HTTP_CODES
                            .iter().map(|(_, c)| *c).collect::<std::collections::BTreeSet<_>>()},
                        "message": {"type": "string"}}}}},
                "Status": {"type": "object", "required": ["status"],
                    "properties": {"status": {"type": "string"}}},
                "DetectJson": {"type": "object", "additionalProperties": false, "properties": {
                    "image": {"type": "string", "description": "Base64 image (a data: URL prefix is accepted)."},
                    "images": {"type": "array", "items": {"type": "string"}},
                    "score_threshold": {"type": "number", "minimum": 0, "maximum": 1},
                    "max_detections": {"type": "integer", "minimum": 1},
                    "classes": {"oneOf": [
                        {"type": "string"},
                        {"type": "integer", "minimum": 0},
                        {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}}]},
                    "timeout_ms": {"type": "integer", "minimum": 1}}},
                "Box": {"type": "object", "required": ["x1", "y1", "x2", "y2"], "properties": {
                    "x1": {"type": "number"}, "y1": {"type": "number"},
                    "x2": {"type": "number"}, "y2": {"type": "number"}}},
                "Detection": {"type": "object", "required": ["class_id", "label", "score", "box"], "properties": {
                    "class_id": {"type": "integer", "minimum": 0},
                    "label": {"type": "string"},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "box": {"$ref": "#/components/schemas/Box"}}},
                "ImageResult": {"type": "object", "required": ["width", "height", "detections"], "properties": {
                    "width": {"type": "integer"}, "height": {"type": "integer"},
                    "detections": {"type": "array", "items": {"$ref": "#/components/schemas/Detection"}}}},
                "DetectResponse": {"type": "object",
                    "required": ["request_id", "model", "images", "timings_ms"], "properties": {
                    "request_id": {"type": "string"},
                    "model": {"type": "object", "required": ["name", "version", "provider"], "properties": {
                        "name": {"type": "string"}, "version": {"type": "string"},
                        "provider": {"type": "string", "enum": ["tensorrt", "cuda", "cpu"]}}},
                    "images": {"type": "array", "items": {"$ref": "#/components/schemas/ImageResult"}},
                    "timings_ms": {"type": "object",
                        "required": ["queue", "decode", "preprocess", "infer", "total"], "properties": {
                        "queue": {"type": "number"}, "decode": {"type": "number"},
                        "preprocess": {"type": "number"}, "infer": {"type": "number"},
                        "total": {"type": "number"}}}}},
                "Models": {"type": "object",
                    "required": ["name", "version", "provider", "requested_providers", "io_binding", "host_memory", "ready", "metadata", "input_sizes", "batching"],
                    "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"},
                    "provider": {"type": "string"},
                    "requested_providers": {"type": "array", "items": {"type": "string"}},
                    "provider_failures": {"type": "array", "items": {"type": "object"}},
                    "io_binding": {"type": "boolean", "description": "batches run through ONNX Runtime I/O binding over buffers allocated once per batch size"},
                    "host_memory": {"type": "string", "enum": ["cuda-pinned", "cpu"], "description": "host memory batches are staged in"},
                    "ready": {"type": "boolean"},
                    "classes": {"type": "array", "items": {"type": "string"}},
                    "metadata": {"type": "object"},
                    "input_sizes": {"type": "array", "description": "[height, width] inputs images are resized to; each image goes to the one it is shrunk least in",
                        "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}},
                    "batching": {"type": "object"},
                    "score_threshold": {"type": "number"}}}
            }
        },
        "security": [{}, {"bearer": []}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_detect_error_status_is_documented() {
        let s = spec();
        let responses = &s["paths"]["/v1/detect"]["post"]["responses"];
        for (status, code) in crate::error::ServeError::HTTP_CODES {
            // 404 is the fallback for unknown paths, not a response of a documented route.
            if *status == 404 {
                continue;
            }
            assert!(
                responses.get(status.to_string()).is_some(),
                "/v1/detect does not document {status} ({code})"
            );
        }
        let codes = &s["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
            ["enum"];
        assert_eq!(
            codes.as_array().unwrap().len(),
            crate::error::ServeError::HTTP_CODES.len()
        );
    }
}
