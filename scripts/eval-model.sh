#!/usr/bin/env bash
# COCO metrics of a checkpoint on one split, from our evaluator AND pycocotools on the same
# detections file (issue 24: the shipped model reports its held-out test split this way).
# Writes OUT_JSON atomically: {"split", "images", "ours": {AP..ARl}, "pycocotools": {...}}.
#
# Usage: scripts/eval-model.sh CKPT SPLIT_DIR OUT_JSON [RESIZE]
#   SPLIT_DIR holds instances.json + images/ (the synth layout); RESIZE stretch|letterbox.
# Env: BIN_DIR (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:?usage: scripts/eval-model.sh CKPT SPLIT_DIR OUT_JSON [RESIZE]}
split=${2:?usage: scripts/eval-model.sh CKPT SPLIT_DIR OUT_JSON [RESIZE]}
out=${3:?usage: scripts/eval-model.sh CKPT SPLIT_DIR OUT_JSON [RESIZE]}
resize=${4:-stretch}
bin=${BIN_DIR:-target/release}
py=.venv/bin/python
[ -f "$ckpt" ] || { echo "no checkpoint $ckpt" >&2; exit 1; }
[ -f "$split/instances.json" ] || { echo "no $split/instances.json (for a synthetic test split: codetr-train synth --test N)" >&2; exit 1; }
[ -x "$py" ] || scripts/setup-python.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin/codetr-train" validate --checkpoint "$ckpt" --data "$split" --resize "$resize" \
  --out-detections "$tmp/dt.json" --json > "$tmp/ours.json"
"$py" tests/python/coco_eval_ref.py "$split/instances.json" "$tmp/dt.json" > "$tmp/ref.json" 2>/dev/null
"$py" - "$tmp" "$split" "$out" <<'PY'
import json, os, sys
from pathlib import Path
tmp, split, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
m = {"split": str(split),
     "images": len(json.loads((split / "instances.json").read_text())["images"]),
     "ours": json.loads((tmp / "ours.json").read_text()),
     "pycocotools": json.loads((tmp / "ref.json").read_text())}
part = out.with_name(out.name + ".part")
with open(part, "w") as f:
    f.write(json.dumps(m, indent=1) + "\n")
    f.flush()
    os.fsync(f.fileno())
os.replace(part, out)
print(f"{split}: {m['images']} images, AP ours {m['ours']['AP']} pycocotools {m['pycocotools']['AP']}")
PY
