#!/usr/bin/env bash
# Ships a trained run as models/NAME/ (issue 9): the best checkpoint, its ONNX export
# (checked against Burn in ONNX Runtime), the run config, the curves, metrics from our
# evaluator AND pycocotools on the whole val split (what the checkpoint was picked on) and on
# the held-out test split (what the card reports, issue 24), and a few val images with their ground
# truth under samples/ (a COCO split: samples/instances.json + samples/images/) and what the
# Burn model detects on them (samples/expected_detections.json). The model
# card (models/NAME/README.md) is written by hand from metrics.json.
#
# Usage: scripts/ship-model.sh RUN_DIR [NAME] [DATA_VAL] [DATA_TEST]
#   NAME defaults to codino-tiny-synth, DATA_VAL to data/synth/val, DATA_TEST to the val
#   split's sibling test/ (`codetr-train synth --test N` writes it).
# Env: BIN_DIR (target/release), SAMPLES (3), ORT_DYLIB_PATH (else the venv's wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: scripts/ship-model.sh RUN_DIR [NAME] [DATA_VAL]}
name=${2:-codino-tiny-synth}
val=${3:-data/synth/val}
test_split=${4:-$(dirname "$val")/test}
bin=${BIN_DIR:-target/release}
samples=${SAMPLES:-3}
py=.venv/bin/python
ckpt=$run/best/model.ckpt
[ -f "$ckpt" ] || { echo "no $ckpt (a finished run has best/model.ckpt)" >&2; exit 1; }
[ -f "$val/instances.json" ] || { echo "no $val/instances.json" >&2; exit 1; }
[ -f "$test_split/instances.json" ] || { echo "no held-out $test_split/instances.json (codetr-train synth --test N)" >&2; exit 1; }
[ -x "$py" ] || scripts/setup-python.sh
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH=$("$py" -c 'import onnxruntime, os, glob; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[-1])')
  export ORT_DYLIB_PATH
fi
out=models/$name
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/ship/samples/images"

# Samples: the first val images by id, with their annotations, as a COCO split.
"$py" - "$val" "$tmp/ship/samples" "$samples" <<'PY'
import json, shutil, sys
from pathlib import Path
val, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
gt = json.loads((val / "instances.json").read_text())
images = sorted(gt["images"], key=lambda i: i["id"])[:n]
ids = {i["id"] for i in images}
for i in images:
    shutil.copy(val / "images" / i["file_name"], out / "images" / Path(i["file_name"]).name)
    i["file_name"] = Path(i["file_name"]).name
sub = {"images": images, "categories": gt["categories"],
       "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
(out / "instances.json").write_text(json.dumps(sub, indent=1) + "\n")
PY

cp "$ckpt" "$tmp/ship/model.ckpt"
# The run config, re-runnable from the repository root: data paths relative, a fresh run dir
# (files the run kept in its own dir, such as a warm start's init.ckpt, move with it, also
# when the run lived outside the repository).
"$py" - "$run/config.toml" "$tmp/ship/config.toml" "$PWD" "$name" "$(realpath "$run")" <<'PY'
import re, sys
src, dst, root, name, run = sys.argv[1:6]
text = open(src).read().replace(run.rstrip("/") + "/", f"runs/{name}/")
text = text.replace(root.rstrip("/") + "/", "")
text = re.sub(r'(?m)^out = ".*"$', f'out = "runs/{name}"', text)
open(dst, "w").write(text)
PY
"$bin/codetr-export" --checkpoint "$tmp/ship/model.ckpt" --out "$tmp/ship/model.onnx" \
  --check --check-data "$val" --check-batches 1,3 | tee "$tmp/export.txt"
"$bin/codetr-train" plot "$run" --out "$tmp/ship/curves.png" >/dev/null
BIN_DIR=$bin scripts/eval-model.sh "$tmp/ship/model.ckpt" "$val" "$tmp/val.json"
BIN_DIR=$bin scripts/eval-model.sh "$tmp/ship/model.ckpt" "$test_split" "$tmp/test.json"
"$py" - "$tmp" "$run" <<'PY'
import json, sys
from pathlib import Path
tmp, run = Path(sys.argv[1]), Path(sys.argv[2])
evals = [json.loads(l) for l in (run / "eval.jsonl").read_text().splitlines() if l.strip()]
log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if l.strip()]
val, test = (json.loads((tmp / f).read_text()) for f in ("val.json", "test.json"))
# top level: the val split the checkpoint was picked on (the layout older cards read);
# "test": the held-out split every reported number comes from
m = {"val_images": val["images"],
     "steps": max(l["step"] for l in log),
     "train_seconds": round(sum(l.get("seconds", 0) for l in log), 1),
     "ours": val["ours"],
     "pycocotools": val["pycocotools"],
     "test": {k: test[k] for k in ("images", "ours", "pycocotools")},
     "eval_during_training": evals}
(tmp / "ship" / "metrics.json").write_text(json.dumps(m, indent=1) + "\n")
print(json.dumps({k: m[k] for k in ("steps", "train_seconds")}), "val AP", val["ours"]["AP"],
      "test AP ours", test["ours"]["AP"], "pycocotools", test["pycocotools"]["AP"])
PY
# What the Burn model detects on the samples: the server's end-to-end test compares with it.
"$bin/codetr-train" validate --checkpoint "$tmp/ship/model.ckpt" --data "$tmp/ship/samples" \
  --out-detections "$tmp/ship/samples/expected_detections.json" --json > /dev/null
# The model card's sample table: objects found (right class, IoU >= 0.5, each detection used
# for one object at most, highest score first, as the server's shipped-model test matches)
# and the detections left over, at each score threshold.
"$py" - "$tmp/ship" <<'PY'
import json, sys
from pathlib import Path
ship = Path(sys.argv[1])
gt = json.loads((ship / "samples" / "instances.json").read_text())
dt = json.loads((ship / "samples" / "expected_detections.json").read_text())
def iou(a, b):
    ax, ay, aw, ah = a; bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0
rows = []
for t in (0.1, 0.2, 0.25, 0.3, 0.4):
    found = other = 0
    for img in gt["images"]:
        objs = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        taken = [False] * len(objs)
        dets = sorted((d for d in dt if d["image_id"] == img["id"] and d["score"] >= t),
                      key=lambda d: -d["score"])
        for d in dets:
            cand = [(iou(d["bbox"], o["bbox"]), i) for i, o in enumerate(objs)
                    if not taken[i] and o["category_id"] == d["category_id"]]
            cand = [c for c in cand if c[0] >= 0.5]
            if cand:
                taken[max(cand)[1]] = True
            else:
                other += 1
        found += sum(taken)
    rows.append({"threshold": t, "found": found, "other": other,
                 "objects": len(gt["annotations"])})
m = json.loads((ship / "metrics.json").read_text())
m["samples_by_threshold"] = rows
(ship / "metrics.json").write_text(json.dumps(m, indent=1) + "\n")
print("samples found/other by threshold:",
      ", ".join(f"{r['threshold']}: {r['found']}/{r['other']}" for r in rows),
      f"(of {rows[0]['objects']} objects)")
PY
mkdir -p "$out"
# README.md (the hand-written model card) is kept; everything else is replaced.
find "$out" -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
cp -r "$tmp/ship/." "$out/"
echo "shipped $run → $out"; ls -la "$out"
