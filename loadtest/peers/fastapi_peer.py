#!/usr/bin/env python3
"""The peer a competent Python user would write: FastAPI + uvicorn + onnxruntime serving the
SAME exported graph with the same API as codetr-serve (raw image body or multipart `image`
parts on POST /v1/detect, `score_threshold` / `max_detections` query parameters, the same JSON
answer) and the same preprocessing (Pillow decode with EXIF transpose, bilinear stretch to the
graph's input size). One InferenceSession shared by FastAPI's thread pool (session.run releases
the GIL); no batching — that is what users get without writing a batcher.

    python loadtest/peers/fastapi_peer.py --model model.onnx --port 8081 [--threads N]
"""
from __future__ import annotations

import argparse
import io
import json
import time
import uuid

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image, ImageOps

ACCEPTED = {"image/jpeg", "image/png", "image/webp"}


def build_app(model: str, intra_threads: int) -> FastAPI:
    so = ort.SessionOptions()
    if intra_threads > 0:
        so.intra_op_num_threads = intra_threads
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["codetr.classes"])
    in_h, in_w = json.loads(meta["codetr.input_size"])
    top_k = int(meta["codetr.max_detections"])
    app = FastAPI()

    def prepare(data: bytes) -> tuple[np.ndarray, tuple[int, int], float, float]:
        t0 = time.perf_counter()
        try:
            img = Image.open(io.BytesIO(data))
            img = ImageOps.exif_transpose(img).convert("RGB")
        except Exception as e:  # noqa: BLE001 — any decoder failure is the client's bad image
            raise HTTPException(422, detail=f"cannot decode: {e}") from e
        t1 = time.perf_counter()
        w, h = img.size
        px = np.asarray(img.resize((in_w, in_h), Image.BILINEAR), dtype=np.uint8)
        return px, (h, w), t1 - t0, time.perf_counter() - t1

    def detect_images(blobs: list[bytes], thr: float, k: int) -> dict:
        t0 = time.perf_counter()
        prepared = [prepare(b) for b in blobs]
        images = np.stack([p[0] for p in prepared])
        sizes = np.array([p[1] for p in prepared], dtype=np.int64)
        t1 = time.perf_counter()
        labels, scores, boxes = sess.run(None, {"images": images, "orig_sizes": sizes})
        t2 = time.perf_counter()
        out = []
        for i, (px, (h, w), _, _) in enumerate(prepared):
            dets = []
            for l, s, b in zip(labels[i], scores[i], boxes[i]):
                if s < thr or len(dets) >= k:
                    continue
                dets.append({"class_id": int(l), "label": classes[int(l)], "score": float(s),
                             "box": {"x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]), "y2": float(b[3])}})
            out.append({"width": w, "height": h, "detections": dets})
        return {
            "request_id": uuid.uuid4().hex,
            "model": {"name": "peer", "version": meta.get("codetr.checkpoint_sha256", "")[:12], "provider": "cpu"},
            "images": out,
            "timings_ms": {"queue": 0.0, "decode": 1e3 * sum(p[2] for p in prepared),
                           "preprocess": 1e3 * sum(p[3] for p in prepared),
                           "infer": 1e3 * (t2 - t1), "total": 1e3 * (time.perf_counter() - t0)},
        }

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse("# no metrics in the peer\n")

    @app.post("/v1/detect")
    async def detect(request: Request, score_threshold: float = 0.3, max_detections: int = top_k):
        ct = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ct in ACCEPTED:
            blobs = [await request.body()]
        elif ct == "multipart/form-data":
            form = await request.form()
            blobs = [await f.read() for k, f in form.multi_items() if k in ("image", "file")]
        else:
            return JSONResponse({"error": {"code": "unsupported_media_type", "message": ct}}, 415)
        if not blobs:
            return JSONResponse({"error": {"code": "bad_request", "message": "no image"}}, 400)
        # The CPU work runs in the thread pool, as FastAPI does for sync endpoints.
        from starlette.concurrency import run_in_threadpool
        try:
            return await run_in_threadpool(detect_images, blobs, score_threshold, max_detections)
        except HTTPException as e:
            return JSONResponse({"error": {"code": "invalid_image", "message": str(e.detail)}}, e.status_code)

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--intra-threads", type=int, default=0, help="ORT intra-op threads (0 = ORT default)")
    a = ap.parse_args()
    uvicorn.run(build_app(a.model, a.intra_threads), host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
