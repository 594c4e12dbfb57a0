#!/usr/bin/env bash
# ORT CPU latency of the exported paper-r50 graph at 800×800 (batch 1) against HF transformers'
# DeformableDetr with the same dimensions exported by torch.onnx (bench/hf_onnx_export.py),
# timed alternately in one process. Writes bench/results/onnx_latency.json.
#   REF_PYTHON=/path/to/venv/bin/python bench/onnx_latency.sh   (torch + transformers; never CI)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${REF_PYTHON:?set REF_PYTHON to a python with torch and transformers}"
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
RUNS=${RUNS:-5}
tmp=${TMPDIR_BENCH:-$(mktemp -d)}
BIN_DIR=${BIN_DIR:-target/release}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p codetr-train -p codetr-export
[ -f "$tmp/r50.ckpt" ] || "$BIN_DIR"/codetr-train init --preset paper-r50 --out "$tmp/r50.ckpt" >/dev/null
"$BIN_DIR"/codetr-export --checkpoint "$tmp/r50.ckpt" --out "$tmp/codetr.onnx" >/dev/null
[ -z "${WITH_GATHER:-}" ] || "$BIN_DIR"/codetr-export --checkpoint "$tmp/r50.ckpt" --out "$tmp/codetr-gather.onnx" --msda gather >/dev/null
[ -f "$tmp/hf.onnx" ] || "$REF_PYTHON" bench/hf_onnx_export.py "$tmp/hf.onnx" 800 >/dev/null 2>&1
"$PY" bench/ort_latency.py "$THREADS" "$RUNS" \
  "codetr_grid_sample=$tmp/codetr.onnx:codetr" ${WITH_GATHER:+"codetr_gather=$tmp/codetr-gather.onnx:codetr"} \
  "hf_deformable_detr=$tmp/hf.onnx:hf" > "$tmp/lat.json"
python3 - "$tmp/lat.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
hf = r["hf_deformable_detr"]["median_s"]
for k in [k for k in ("codetr_grid_sample", "codetr_gather") if k in r]:
    r[k]["over_hf"] = r[k]["median_s"] / hf
for k, v in r.items():
    if isinstance(v, dict):
        print(f"{k}: {v['nodes']} nodes, {v['median_s']:.3f} s" + (f" ({v['over_hf']:.2f}x HF)" if "over_hf" in v else ""))
json.dump(r, open("bench/results/onnx_latency.json", "w"), indent=1)
PY
