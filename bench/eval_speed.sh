#!/usr/bin/env bash
# COCO bbox evaluation speed: `codetr-train eval` vs pycocotools on 5,000 images x 100
# detections (80 categories). Both timings are whole-process wall time: reading both json
# files, evaluate, accumulate, summarize. Checks the 12 numbers agree, writes
# bench/results/eval_speed.json.
#
# Env: IMAGES (5000), DETS_PER_IMAGE (100), PYCOCO_TIMEOUT seconds (900), CARGO_TARGET_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
IMAGES="${IMAGES:-5000}"
DETS_PER_IMAGE="${DETS_PER_IMAGE:-100}"
PYCOCO_TIMEOUT="${PYCOCO_TIMEOUT:-900}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
DATA="$ROOT/data/bench-eval/${IMAGES}x${DETS_PER_IMAGE}"
OUT="$ROOT/bench/results/eval_speed.json"
PY="$ROOT/.venv/bin/python"

"$ROOT/scripts/setup-python.sh"   # the pinned reference tools, in .venv

echo "== building codetr-train (release)"
timeout 1800 cargo build --release -q -p codetr-train --bin codetr-train
BIN="$TARGET_DIR/release/codetr-train"

if [ ! -f "$DATA/gt.json" ] || [ ! -f "$DATA/dt.json" ]; then
    echo "== generating $IMAGES images x $DETS_PER_IMAGE detections"
    timeout 600 "$PY" bench/make_eval_bench.py "$DATA" --images "$IMAGES" \
        --dets-per-image "$DETS_PER_IMAGE"
fi

now() { date +%s.%N; }

echo "== codetr-train eval"
t0=$(now)
timeout 300 "$BIN" eval --gt "$DATA/gt.json" --dt "$DATA/dt.json" --json > "$DATA/ours.json"
t1=$(now)

echo "== pycocotools (timeout ${PYCOCO_TIMEOUT}s)"
t2=$(now)
timeout "$PYCOCO_TIMEOUT" "$PY" tests/python/coco_eval_ref.py "$DATA/gt.json" "$DATA/dt.json" \
    > "$DATA/pycoco.json" 2> "$DATA/pycoco.log"
t3=$(now)

mkdir -p "$(dirname "$OUT")"
"$PY" - "$DATA" "$OUT" "$t0" "$t1" "$t2" "$t3" "$IMAGES" "$DETS_PER_IMAGE" <<'PYEOF'
import json, os, platform, sys
data, out, t0, t1, t2, t3, images, dpi = sys.argv[1:]
ours = json.load(open(os.path.join(data, "ours.json")))
ref = json.load(open(os.path.join(data, "pycoco.json")))
gt = json.load(open(os.path.join(data, "gt.json")))
ours_s, py_s = float(t1) - float(t0), float(t3) - float(t2)
diff = max(abs(ours[k] - ref[k]) for k in ref)
res = {
    "images": int(images), "dets_per_image": int(dpi),
    "detections": int(images) * int(dpi), "gt_annotations": len(gt["annotations"]),
    "categories": len(gt["categories"]),
    "ours_s": round(ours_s, 3), "pycocotools_s": round(py_s, 3),
    "speedup": round(py_s / ours_s, 1), "max_abs_diff": diff,
    "ours": ours, "pycocotools": ref,
    "cpus": os.cpu_count(), "machine": platform.machine(),
}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(res, f, indent=2)
    f.write("\n")
os.replace(tmp, out)
print(f"ours        {ours_s:8.3f} s")
print(f"pycocotools {py_s:8.3f} s")
print(f"speedup     {py_s / ours_s:8.1f}x   (max |diff| of the 12 stats: {diff:.2e})")
print(f"-> {out}")
if diff > 1e-4:
    sys.exit("stats disagree")
PYEOF
