#!/usr/bin/env bash
# How long ONNX Runtime takes to create a session for our graphs: `tiny` (the shipped model)
# and `paper-r50` at 800×800, each with both MSDA lowerings, with the server's session options
# and with memory reuse off (bench/ort_session_init.py). The server opens one session per
# worker, one after another, before it warms up. Writes bench/results/session_init.json.
#   bench/session_init.sh                 (BIN_DIR=target/debug SKIP_BUILD=1 to reuse a build)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=${PY:-.venv/bin/python}
REPS=${REPS:-3}
tmp=${TMPDIR_BENCH:-$(mktemp -d)}
BIN_DIR=${BIN_DIR:-target/release}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p codetr-train -p codetr-export
[ -f "$tmp/r50.ckpt" ] || "$BIN_DIR"/codetr-train init --preset paper-r50 --out "$tmp/r50.ckpt" >/dev/null
graphs=()
for m in grid-sample gather; do
  "$BIN_DIR"/codetr-export --checkpoint models/codino-tiny-synth/model.ckpt --out "$tmp/tiny-$m.onnx" --msda "$m" >/dev/null
  "$BIN_DIR"/codetr-export --checkpoint "$tmp/r50.ckpt" --out "$tmp/r50-$m.onnx" --msda "$m" >/dev/null
  graphs+=("tiny_$m=$tmp/tiny-$m.onnx" "paper_r50_800_$m=$tmp/r50-$m.onnx")
done
"$PY" bench/ort_session_init.py "$REPS" "${graphs[@]}" > "$tmp/init.json"
python3 - "$tmp/init.json" "$(nproc)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["cores"] = int(sys.argv[2])
r["command"] = "bench/session_init.sh"
json.dump(r, open("bench/results/session_init.json", "w"), indent=1)
PY
