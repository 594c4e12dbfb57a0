#!/usr/bin/env bash
# Issue 25's training figures in one device call: `codetr-train fit` on the GPU for a fixed
# number of steps on synthetic data, `tiny` (batch 8, 256²) and `paper-r50` (batch 2, 800²),
# K = 0 and K = 2, against HF transformers' DeformableDetr training step of the same
# dimensions in the GPU machine's PyTorch (bench/train_step_torch.py). Per arm: median step
# time (after 2 warm-up steps), images/s, first and last loss, peak GPU memory (nvidia-smi
# sampled every 100 ms, whole device). Writes $OUT/gpu_train.json.
#
# Device (after bench/gpu_train_kit.sh; see README "GPU training"): carry [".gputrain",
#   ".gpupeer"]; source .gputrain/env.sh && OUT=$OUT DEVICE=vulkan bash bench/gpu_train.sh
# CPU rehearsal (a few steps, paper-r50 at 256² batch 1, peer on CPU):
#   REHEARSAL=1 PYTHON=/path/to/python-with-torch-transformers bash bench/gpu_train.sh
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-$ROOT/bench/results/gpu_train}
mkdir -p "$OUT"
WORK=${WORK:-/tmp/codetr-gpu-train}
mkdir -p "$WORK"
REHEARSAL=${REHEARSAL:-0}
PY=${PYTHON:-python3}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
pick() { for c in "$(command -v "$1" 2>/dev/null)" "${@:2}"; do [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return; }; done; }
BIN=${BIN:-$(pick codetr-train target/release/codetr-train target/debug/codetr-train)}
[ -n "$BIN" ] || { log "no codetr-train binary"; exit 2; }

if [ "$REHEARSAL" = 1 ]; then
  DEVICE=${DEVICE:-cpu}; peer_dev=cpu; tiny_steps=4; paper_steps=3; paper_size=256; paper_batch=1
  synth_n=64; limit_tiny=300; limit_paper=400
else
  DEVICE=${DEVICE:-vulkan}; peer_dev=cuda; tiny_steps=${TINY_STEPS:-30}; paper_steps=${PAPER_STEPS:-8}
  paper_size=800; paper_batch=2; synth_n=256; limit_tiny=150; limit_paper=200
fi

build=$("$BIN" --version 2>&1)  # backends, autotune, fusion: the figures depend on them
log "device $DEVICE, binary $BIN: $build"
"$PY" -c 'import torch, transformers, PIL, scipy' 2>&1 | tail -1 | sed 's/^/peer python: /' | tee -a "$OUT/log.txt"
"$BIN" synth --out "$WORK/synth" --train "$synth_n" --val 16 --no-stats-file > "$WORK/synth.log" 2>&1 \
  || { log "synth failed"; tail -3 "$WORK/synth.log"; exit 1; }
"$BIN" synth --out "$WORK/synth800" --train "$synth_n" --val 16 --size "${paper_size}x${paper_size}" \
  --no-stats-file > "$WORK/synth800.log" 2>&1 || { log "synth 800 failed"; exit 1; }

mem_watch() { # file: samples device memory until killed
  command -v nvidia-smi >/dev/null || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$1" 2>/dev/null
}

arm() { # name preset k steps batch size data limit [precision]
  local name=$1 preset=$2 k=$3 steps=$4 batch=$5 size=$6 data=$7 limit=$8 precision=${9:-f32}
  local run="$WORK/run-$name"
  rm -rf "$run"
  cat > "$WORK/$name.toml" <<TOML
[run]
out = "$run"
device = "$DEVICE"
workers = 2
checkpoint_every = 100000
eval_every = 100000
[data]
train = "$data/train"
val = "$data/val"
val_images = 4
[model]
preset = "$preset"
[schedule]
steps = $steps
batch_size = $batch
sizes = [$size]
precision = "$precision"
[co]
k = $k
TOML
  echo "$batch" > "$OUT/batch-$name.txt"
  echo "$precision" > "$OUT/precision-$name.txt"
  mem_watch "$OUT/mem-$name.txt" & local mw=$!
  local t0=$SECONDS
  timeout "$limit" "$BIN" fit --config "$WORK/$name.toml" --quiet > "$OUT/fit-$name.log" 2>&1
  local rc=$?
  kill "$mw" 2>/dev/null; wait "$mw" 2>/dev/null
  cp "$run/log.jsonl" "$OUT/log-$name.jsonl" 2>/dev/null
  log "$name: rc=$rc in $((SECONDS - t0)) s, $(wc -l < "$run/log.jsonl" 2>/dev/null || echo 0) steps"
  [ $rc = 0 ] || tail -4 "$OUT/fit-$name.log" | tee -a "$OUT/log.txt"
}

arm tiny-k0 tiny 0 "$tiny_steps" 8 256 "$WORK/synth" "$limit_tiny"
arm tiny-k2 tiny 2 "$tiny_steps" 8 256 "$WORK/synth" "$limit_tiny"
arm paper-k0 paper-r50 0 "$paper_steps" "$paper_batch" "$paper_size" "$WORK/synth800" "$limit_paper"
arm paper-k2 paper-r50 2 "$paper_steps" "$paper_batch" "$paper_size" "$WORK/synth800" "$limit_paper"
# mixed precision (products in a half type, see core/src/model/autocast.rs): bf16 where the
# device computes in it (CUDA, CPU), f16 with loss scaling where it does not (most Vulkan)
HALF=${HALF:-$([ "$DEVICE" = vulkan ] && echo f16 || echo bf16)}
arm "paper-k2-$HALF" paper-r50 2 "$paper_steps" "$paper_batch" "$paper_size" "$WORK/synth800" "$limit_paper" "$HALF"

peer() { # name preset batch size steps
  log "peer $1"
  timeout 240 "$PY" bench/train_step_torch.py --device "$peer_dev" --preset "$2" --batch "$3" \
    --size "$4" --steps "$5" > "$OUT/peer-$1.json" 2> "$OUT/peer-$1.err" \
    || { log "peer $1 failed"; tail -3 "$OUT/peer-$1.err" | tee -a "$OUT/log.txt"; }
}
peer tiny tiny 8 256 "$tiny_steps"
peer paper paper-r50 "$paper_batch" "$paper_size" "$paper_steps"

"$PY" - "$OUT" "$DEVICE" "$REHEARSAL" "$build" <<'P' | tee "$OUT/gpu_train.json"
import json, pathlib, statistics, sys
out, device, rehearsal, build = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4]
res = {"bench": "gpu_train", "device": device, "build": build, "rehearsal": rehearsal, "arms": {}, "peer": {}}
for f in sorted(out.glob("log-*.jsonl")):
    name = f.stem[4:]
    rows = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
    if not rows:
        continue
    secs = [r["seconds"] for r in rows]
    steady = secs[2:] if len(secs) > 3 else secs
    mem = out / f"mem-{name}.txt"
    peak = None
    if mem.exists():
        vals = [int(x) for x in mem.read_text().split() if x.isdigit()]
        peak = max(vals) * 2**20 if vals else None
    batch = int((out / f"batch-{name}.txt").read_text())
    prec = out / f"precision-{name}.txt"
    res["arms"][name] = {"steps": len(rows), "batch": batch,
                         "precision": prec.read_text().strip() if prec.exists() else "f32",
                         "skipped_steps": sum(1 for r in rows if r.get("skipped")),
                         "seconds_per_step": statistics.median(steady),
                         "images_per_s": batch / statistics.median(steady),
                         "loss_first_last": [rows[0]["loss"], rows[-1]["loss"]],
                         "t_forward": statistics.median(r["t_forward"] for r in rows[-len(steady):]),
                         "t_backward": statistics.median(r["t_backward"] for r in rows[-len(steady):]),
                         "host_reads_per_step": rows[-1].get("host_reads"),
                         "host_bytes_per_step": rows[-1].get("host_bytes"),
                         "peak_gpu_bytes_device": peak}
for f in sorted(out.glob("peer-*.json")):
    try:
        res["peer"][f.stem[5:]] = json.loads(f.read_text().strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        pass
for name, a in res["arms"].items():
    p = res["peer"].get(name.split("-")[0])
    if p and name.endswith("k0"):
        a["over_peer"] = a["seconds_per_step"] / p["seconds_per_step"]
print(json.dumps(res, indent=1))
P
log "summary: $OUT/gpu_train.json"
