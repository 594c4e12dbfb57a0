#!/usr/bin/env bash
# Serving both orientations at the official scale: two canvases (a landscape and a portrait
# input size, each image in the one it is shrunk least in) against one square canvas of the
# long side (the other way to give every image its official size), on a workload of half
# landscape, half portrait images. Same graph (the shipped model exported as a dynamic-size
# letterbox graph with limits SHORT,LONG), same batching, the two servers measured interleaved
# by codetr-loadtest. Images are 640×384 and 384×640: with limits 256,427 both fit 427×256 /
# 256×427 exactly. Writes bench/results/two_canvas_throughput.{json,txt}.
# Usage: bash bench/two_canvas_throughput.sh   (BIN_DIR=target/release by default)
# Env: SHORT, LONG (limits, 256 and 427), CONC (closed-loop levels, "4,8"), SECS (window, 10),
#      ROUNDS (2), MAX_BATCH (8), PROVIDERS (cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN_DIR:-target/release}
SHORT=${SHORT:-256}; LONG=${LONG:-427}
CONC=${CONC:-4,8}; SECS=${SECS:-10}; ROUNDS=${ROUNDS:-2}; MAX_BATCH=${MAX_BATCH:-8}
PROVIDERS=${PROVIDERS:-cpu}
W=${WORK:-/tmp/twocanvas-tp}; rm -rf "$W"; mkdir -p "$W/images"
OUT=${OUT:-bench/results}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | head -1)}
"$BIN/codetr-export" --checkpoint models/codino-tiny-synth/model.ckpt --out "$W/model.onnx" \
  --resize letterbox --letterbox-limits "$SHORT,$LONG" --dynamic-size | tail -2
.venv/bin/python - "$W/images" <<'P'
import sys
from PIL import Image
out = sys.argv[1]
src = Image.open("server/tests/fixtures/sample.jpg").convert("RGB")
for i in range(8):
    im = src.rotate(i * 7, expand=False)
    im.resize((640, 384), Image.BILINEAR).save(f"{out}/land{i}.jpg", quality=90)
    im.transpose(Image.ROTATE_90).resize((384, 640), Image.BILINEAR).save(f"{out}/port{i}.jpg", quality=90)
P
serve() { # port sizes
  "$BIN/codetr-serve" --model "$W/model.onnx" --input-size "$2" --max-batch-size "$MAX_BATCH" \
    --providers "$PROVIDERS" --bind "127.0.0.1:$1" > "$W/serve-$1.log" 2>&1 &
  echo $!
}
a=$(serve 18941 "${SHORT}x${LONG},${LONG}x${SHORT}")
b=$(serve 18942 "${LONG}x${LONG}")
trap 'kill $a $b 2>/dev/null || true' EXIT
for port in 18941 18942; do
  for _ in $(seq 300); do curl -sf "localhost:$port/readyz" > /dev/null && break; sleep 1; done
done
"$BIN/codetr-loadtest" --url http://127.0.0.1:18941 --name "two canvases ${SHORT}x${LONG}+${LONG}x${SHORT}" \
  --compare http://127.0.0.1:18942 --compare-name "one canvas ${LONG}x${LONG}" \
  --images "$W/images" --concurrency "$CONC" --duration "$SECS" --rounds "$ROUNDS" \
  --json "$OUT/two_canvas_throughput.json" | tee "$W/loadtest.txt"
for port in 18941 18942; do
  echo "== :$port"; curl -sf "localhost:$port/metrics" | grep -E '^codetr_(images_by_input_size_total|inference_count_total|execution_count_total)'
done | tee -a "$W/loadtest.txt"
cp "$W/loadtest.txt" "$OUT/two_canvas_throughput.txt"
