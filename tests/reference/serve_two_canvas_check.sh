#!/usr/bin/env bash
# Issue 23, portrait images at the official scale: `paper-r50` (random weights) exported as a
# dynamic-size letterbox graph with the official limits (800, 1333), served at a landscape and
# a portrait canvas (--input-size 800x1333,1333x800). A landscape 1333×750 and a portrait
# 750×1333 image (both already at their official size, so no resampling: the canvases can be
# built by hand) go in one request; each answer is compared with ONNX Runtime (Python) on its
# own canvas, and the metrics say which canvas each image took. CPU: about 3 minutes on 2 cores.
# Needs codetr-train/codetr-export/codetr-serve builds and .venv.
# Usage: bash tests/reference/serve_two_canvas_check.sh   (BIN_DIR=target/release by default;
#        PROVIDERS=cuda on a GPU machine)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN_DIR:-target/release}
W=${WORK:-/tmp/twocanvas}; rm -rf "$W"; mkdir -p "$W"
PY=.venv/bin/python
PORT=${PORT:-18932}
# On a GPU machine: PROVIDERS=cuda (ONNX Runtime's CUDA build); the reference stays ORT CPU,
# so the comparison then shows CPU↔CUDA drift rather than 0.
PROVIDERS=${PROVIDERS:-cpu}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | head -1)}
"$BIN/codetr-train" init --preset paper-r50 --out "$W/r50.ckpt" --seed 3 | tail -1
"$BIN/codetr-export" --checkpoint "$W/r50.ckpt" --out "$W/r50.onnx" --resize letterbox \
  --letterbox-limits 800,1333 --dynamic-size
"$PY" - "$W" <<'P'
import sys
from PIL import Image
w = sys.argv[1]
src = Image.open("server/tests/fixtures/sample.jpg").convert("RGB")
src.resize((1333, 750), Image.BILINEAR).save(f"{w}/landscape.png")
src.transpose(Image.ROTATE_90).resize((750, 1333), Image.BILINEAR).save(f"{w}/portrait.png")
P
"$BIN/codetr-serve" --model "$W/r50.onnx" --input-size 800x1333,1333x800 --max-batch-size 1 \
  --providers "$PROVIDERS" \
  --timeout-ms 600000 --bind 127.0.0.1:$PORT > "$W/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
t0=$(date +%s)
for _ in $(seq 600); do curl -sf localhost:$PORT/readyz > /dev/null && break; sleep 1; done
echo "ready after $(( $(date +%s) - t0 )) s (warm-up: batch 1 at both canvases)"
curl -sf localhost:$PORT/v1/models > "$W/models.json"
"$PY" - "$W" > "$W/body.json" <<'P'
import base64, json, sys
w = sys.argv[1]
b = lambda p: base64.b64encode(open(p, "rb").read()).decode()
print(json.dumps({"images": [b(f"{w}/portrait.png"), b(f"{w}/landscape.png")], "score_threshold": 0}))
P
curl -sf -H 'Content-Type: application/json' --data-binary @"$W/body.json" \
  localhost:$PORT/v1/detect > "$W/serve.json"
curl -sf localhost:$PORT/metrics | grep -E '^codetr_(images_by_input_size_total|execution_count_total)' \
  > "$W/metrics.txt"
"$PY" - "$W" <<'P'
import json, sys
import numpy as np
import onnxruntime as ort
from PIL import Image
w = sys.argv[1]
m = json.load(open(f"{w}/models.json"))
meta = m["metadata"]
print("served:", meta["preset"], "on", m["provider"], "format", meta["format_version"], "limits", meta["letterbox_limits"],
      "input_sizes", m["input_sizes"], "max_batch_at",
      [(b["input_size"], b["max_batch"]) for b in meta["max_batch_at"]],
      "graph_max_batch", m["batching"]["graph_max_batch"])
served = json.load(open(f"{w}/serve.json"))
sess = ort.InferenceSession(f"{w}/r50.onnx", providers=["CPUExecutionProvider"])
for i, (name, (ch, cw)) in enumerate([("portrait", (1333, 800)), ("landscape", (800, 1333))]):
    img = np.asarray(Image.open(f"{w}/{name}.png").convert("RGB"))
    h, wd = img.shape[:2]
    canvas = np.zeros((1, ch, cw, 3), np.uint8)
    canvas[0, :h, :wd] = img
    size = np.array([[h, wd]], np.int64)
    labels, scores, boxes = sess.run(["labels", "scores", "boxes"],
                                     {"images": canvas, "orig_sizes": size, "valid_sizes": size})
    dets = served["images"][i]["detections"]
    assert len(dets) == scores.shape[1], (len(dets), scores.shape)
    ds = max(abs(d["score"] - s) for d, s in zip(dets, scores[0]))
    db = max(max(abs(d["box"][k] - b[j]) for j, k in enumerate(["x1", "y1", "x2", "y2"]))
             for d, b in zip(dets, boxes[0]))
    lab = sum(d["class_id"] == l for d, l in zip(dets, labels[0]))
    print(f"{name} {wd}x{h} in its {ch}x{cw} canvas: {len(dets)} detections, max |Δscore| {ds:.2e}, "
          f"max |Δbox| {db:.2e} px, labels equal {lab}/{len(dets)}")
    if m["provider"] == "cpu":
        assert ds <= 1e-4 and db <= 1e-4 * max(h, wd) and lab == len(dets), name
P
cat "$W/metrics.txt"
