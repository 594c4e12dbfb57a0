#!/usr/bin/env bash
# Issue 23: codetr-serve on a Swin graph. The official small Swin Co-DINO fixture (random
# weights under the official names) is imported, exported as a letterbox graph with keep-ratio
# limits, served, and its answer on a real JPEG compared with the Burn model (validate) on the
# same image through the same preprocessing. Needs release codetr-train/codetr-export and a
# codetr-serve build. Usage: bash tests/reference/serve_swin_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN_DIR:-target/release}
SERVE=${SERVE:-$(ls target/release/codetr-serve target/debug/codetr-serve 2>/dev/null | head -1 || true)}
W=${WORK:-/tmp/swinserve}; rm -rf $W; mkdir -p $W/split/images
F=core/tests/fixtures/official
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | head -1)}
$BIN/codetr-train import --checkpoint $F/co_dino_swin_small.pth --config $F/co_dino_swin_small.toml --out $W/swin.ckpt | tail -2
$BIN/codetr-export --checkpoint $W/swin.ckpt --out $W/swin.onnx --resize letterbox --letterbox-limits 96,120 --check 2>&1 | grep -E "check|format|PASS|FAIL|nodes" | tail -4
cp server/tests/fixtures/sample.jpg $W/split/images/a.jpg
.venv/bin/python - $W <<'P'
import json, sys
from PIL import Image
w = sys.argv[1]
im = Image.open(f"{w}/split/images/a.jpg")
classes = [f"class_{i}" for i in range(7)]
json.dump({"images": [{"id": 1, "file_name": "a.jpg", "width": im.size[0], "height": im.size[1]}],
           "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]},
          open(f"{w}/split/instances.json", "w"))
P
$BIN/codetr-train validate --checkpoint $W/swin.ckpt --data $W/split --resize letterbox --letterbox-limits 96,120 --out-detections $W/burn.json --json > /dev/null 2>$W/validate.err || { tail -3 $W/validate.err; exit 1; }
"$SERVE" --model $W/swin.onnx --bind 127.0.0.1:18931 > $W/serve.log 2>&1 &
pid=$!
for i in $(seq 60); do curl -sf localhost:18931/v1/models > $W/models.json && break; sleep 1; done
for i in $(seq 120); do
  curl -sf --data-binary @$W/split/images/a.jpg -H 'Content-Type: image/jpeg' 'localhost:18931/v1/detect?score_threshold=0' > $W/serve.json && break; sleep 1
done
kill $pid
.venv/bin/python - $W <<'P'
import json, sys
w = sys.argv[1]
m = json.load(open(f"{w}/models.json"))
print("served:", m["metadata"]["preset"], "format", m["metadata"]["format_version"], "limits", m["metadata"]["letterbox_limits"], "input", m["metadata"]["input_size"])
s = json.load(open(f"{w}/serve.json"))["images"][0]["detections"]
b = sorted(json.load(open(f"{w}/burn.json")), key=lambda d: -d["score"])
print("detections: server", len(s), "burn", len(b))
ds = max(abs(x["score"] - y["score"]) for x, y in zip(s, b))
db = max(max(abs(x["box"]["x1"] - y["bbox"][0]), abs(x["box"]["y1"] - y["bbox"][1]),
             abs(x["box"]["x2"] - y["bbox"][0] - y["bbox"][2]), abs(x["box"]["y2"] - y["bbox"][1] - y["bbox"][3]))
         for x, y in zip(s, b))
lab = sum(x["class_id"] + 1 == y["category_id"] for x, y in zip(s, b))
print(f"max |Δscore| {ds:.2e}, max |Δbox| {db:.2e} px, labels equal {lab}/{len(s)}")
P
