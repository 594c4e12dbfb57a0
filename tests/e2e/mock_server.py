#!/usr/bin/env python3
"""A stand-in for codetr-serve, stdlib only, for testing the demo page without the Rust server.

Serves server/static/index.html at `/`, and answers `GET /v1/models` and
`POST /v1/detect` with fixed, plausible JSON in the server's shapes:

    POST /v1/detect  raw image body (image/jpeg|png|webp)
      200 {"request_id", "model": {name, version, provider},
           "images": [{"width", "height", "detections": [{class_id, label, score,
                                                          box: {x1, y1, x2, y2}}]}],
           "timings_ms": {queue, decode, preprocess, infer, total}}
      415 {"error": {"code": "unsupported_media_type", ...}}  Content-Type not an image type
      422 {"error": {"code": "invalid_image", ...}}           body has no JPEG/PNG/WebP magic
      401 {"error": {"code": "unauthorized", ...}}            --token given and not sent

Width/height are read from the PNG/JPEG/WebP header (for JPEG, with EXIF orientations 5-8
swapping them, as the real server's EXIF correction does); the boxes are fixed fractions of
that size.

    python tests/e2e/mock_server.py [--host 127.0.0.1] [--port 18080] [--token SECRET]
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INDEX_HTML = REPO / "server" / "static" / "index.html"

MODEL = {"name": "codino-tiny-synth", "version": "0.1.0", "provider": "cpu"}
CLASSES = ["square", "triangle", "cross", "circle"]
# (class_id, score, x1, y1, x2, y2) as fractions of width/height.
FIXED_DETECTIONS = [
    (3, 0.91, 0.10, 0.15, 0.45, 0.60),
    (0, 0.74, 0.55, 0.20, 0.90, 0.55),
    (1, 0.42, 0.30, 0.62, 0.70, 0.95),
    (2, 0.12, 0.05, 0.70, 0.25, 0.92),
]
MAX_BODY = 32 * 1024 * 1024
IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp"}


def sniff(body: bytes) -> str | None:
    if body.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(body) >= 12 and body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "image/webp"
    return None


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in a TIFF/EXIF block, 1 if absent."""
    try:
        endian = {b"II": "<", b"MM": ">"}[tiff[:2]]
        ifd = struct.unpack(endian + "I", tiff[4:8])[0]
        count = struct.unpack(endian + "H", tiff[ifd:ifd + 2])[0]
        for k in range(count):
            e = ifd + 2 + 12 * k
            tag, typ = struct.unpack(endian + "HH", tiff[e:e + 4])
            if tag == 0x0112 and typ == 3:
                return struct.unpack(endian + "H", tiff[e + 8:e + 10])[0]
    except (KeyError, struct.error, IndexError):
        pass
    return 1


def image_size(body: bytes, kind: str) -> tuple[int, int] | None:
    """Width and height from the header, or None if it cannot be read."""
    try:
        if kind == "image/png":
            if body[12:16] != b"IHDR":
                return None
            w, h = struct.unpack(">II", body[16:24])
            return w, h
        if kind == "image/jpeg":
            i, orientation = 2, 1
            while i + 4 <= len(body):
                if body[i] != 0xFF:
                    return None
                marker = body[i + 1]
                if marker == 0xFF:  # fill byte
                    i += 1
                    continue
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                seg_len = struct.unpack(">H", body[i + 2:i + 4])[0]
                if marker == 0xE1 and body[i + 4:i + 10] == b"Exif\0\0":
                    orientation = exif_orientation(body[i + 10:i + 2 + seg_len])
                if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB,
                              0xCD, 0xCE, 0xCF):
                    h, w = struct.unpack(">HH", body[i + 5:i + 9])
                    # EXIF orientations 5-8 turn the picture by 90 degrees, as the server does.
                    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
                i += 2 + seg_len
            return None
        if kind == "image/webp":
            chunk = body[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", body[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                b = body[21:25]
                w = 1 + (((b[1] & 0x3F) << 8) | b[0])
                h = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
                return w, h
            if chunk == b"VP8X":
                w = 1 + int.from_bytes(body[24:27], "little")
                h = 1 + int.from_bytes(body[27:30], "little")
                return w, h
    except (struct.error, IndexError):
        return None
    return None


class Handler(BaseHTTPRequestHandler):
    server_version = "codetr-serve-mock/0.1"
    token: str | None = None
    quiet = False

    def log_message(self, fmt, *args):  # noqa: N802 (http.server API)
        if not self.quiet:
            sys.stderr.write("mock: " + (fmt % args) + "\n")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        # The same policy the real page must live under: nothing but 'self' and inline code.
        if ctype.startswith("text/html"):
            self.send_header(
                "Content-Security-Policy",
                "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                "style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
                "connect-src 'self'",
            )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": {"code": code, "message": message}})

    def _authorized(self) -> bool:
        if not self.token:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {self.token}":
            return True
        self._error(401, "unauthorized", "missing or wrong bearer token")
        return False

    def do_GET(self):  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            try:
                html = INDEX_HTML.read_bytes()
            except OSError as e:
                self._error(500, "internal", f"cannot read {INDEX_HTML}: {e}")
                return
            self._send(200, html, "text/html; charset=utf-8")
        elif path == "/v1/models":
            if not self._authorized():
                return
            self._json(200, {"models": [{
                **MODEL,
                "classes": CLASSES,
                "input_size": [320, 320],
                "max_detections": 100,
            }]})
        elif path in ("/healthz", "/readyz"):
            self._send(200, b"ok\n", "text/plain")
        else:
            self._error(404, "not_found", f"no route for {path}")

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path != "/v1/detect":
            self._error(404, "not_found", f"no route for {path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._error(413, "payload_too_large", f"body of {length} bytes is over {MAX_BODY}")
            return
        body = self.rfile.read(length) if length > 0 else b""
        if not self._authorized():
            return
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype not in IMAGE_TYPES:
            self._error(415, "unsupported_media_type",
                        f"Content-Type {ctype or '(none)'} is not image/jpeg, image/png or image/webp")
            return
        kind = sniff(body)
        if kind is None:
            self._error(422, "invalid_image",
                        "the body is not a JPEG, PNG or WebP image (no known magic number)")
            return
        size = image_size(body, kind)
        if size is None or size[0] <= 0 or size[1] <= 0:
            self._error(422, "invalid_image", f"cannot read the {kind} header")
            return
        w, h = size
        dets = [
            {"class_id": c, "label": CLASSES[c], "score": s,
             "box": {"x1": round(x1 * w, 1), "y1": round(y1 * h, 1),
                     "x2": round(x2 * w, 1), "y2": round(y2 * h, 1)}}
            for c, s, x1, y1, x2, y2 in FIXED_DETECTIONS
        ]
        self._json(200, {
            "request_id": uuid.uuid4().hex,
            "model": MODEL,
            "images": [{"width": w, "height": h, "detections": dets}],
            "timings_ms": {"queue": 0.1, "decode": 1.2, "preprocess": 0.4, "infer": 12.5,
                           "total": 14.3},
        })


def start(host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          quiet: bool = True) -> tuple[ThreadingHTTPServer, str]:
    """Start the mock in a daemon thread; returns (server, base URL). Stop with server.shutdown()."""
    handler = type("BoundHandler", (Handler,), {"token": token, "quiet": quiet})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="mock-server", daemon=True).start()
    return httpd, f"http://{host}:{httpd.server_address[1]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "18080")))
    ap.add_argument("--token", default=None, help="require this bearer token")
    args = ap.parse_args()
    handler = type("BoundHandler", (Handler,), {"token": args.token, "quiet": False})
    httpd = ThreadingHTTPServer((args.host, args.port), handler)
    print(f"mock codetr-serve on http://{args.host}:{httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
