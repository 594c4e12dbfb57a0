#!/usr/bin/env bash
# A/B of two codetr-train builds on one device: alternating `fit` runs of the same config
# (tiny, synthetic data), median step time after 2 warm-up steps, and the largest relative
# loss difference between the builds step by step (same seed, same device: a build change
# that changes the numbers shows here).
#
#   bench/step_ab.sh BIN_A BIN_B            e.g. two builds with and without a Burn feature
#   DEVICE=wgpu-cpu K=0 SIZE=128 BATCH=2 STEPS=8 REPS=2 OUT=bench/results/x.jsonl bench/step_ab.sh A B
#
# One JSON line per run on stdout (and appended to $OUT if set).
set -euo pipefail
[ $# = 2 ] || { sed -n 2,11p "$0"; exit 2; }
A=$(realpath "$1") B=$(realpath "$2")
DEVICE=${DEVICE:-wgpu-cpu} K=${K:-0} SIZE=${SIZE:-128} BATCH=${BATCH:-2} STEPS=${STEPS:-8}
REPS=${REPS:-2} PRESET=${PRESET:-tiny}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$A" synth --out "$WORK/data" --train 32 --val 4 --test 0 --size "${SIZE}x${SIZE}" \
  --no-stats-file > /dev/null
run() { # tag bin
  cat > "$WORK/$1.toml" <<TOML
[run]
out = "$WORK/run-$1"
device = "$DEVICE"
workers = 1
checkpoint_every = 100000
eval_every = 100000
[data]
train = "$WORK/data/train"
val = "$WORK/data/val"
val_images = 4
[model]
preset = "$PRESET"
[schedule]
steps = $STEPS
batch_size = $BATCH
sizes = [$SIZE]
[co]
k = $K
TOML
  rm -rf "$WORK/run-$1"
  "$2" fit --config "$WORK/$1.toml" --quiet > "$WORK/$1.log" 2>&1 \
    || { echo "fit failed ($1):" >&2; tail -5 "$WORK/$1.log" >&2; exit 1; }
}
for r in $(seq 1 "$REPS"); do
  run "a$r" "$A"
  run "b$r" "$B"
  python3 - "$WORK" "$r" "$A" "$B" "$DEVICE" "$PRESET" "$K" "$SIZE" "$BATCH" <<'PY' | tee -a "${OUT:-/dev/null}"
import json, statistics, sys
work, r, a, b, device, preset, k, size, batch = sys.argv[1:]
logs = {t: [json.loads(l) for l in open(f"{work}/run-{t}{r}/log.jsonl")] for t in "ab"}
med = {t: statistics.median([s["seconds"] for s in logs[t][2:]]) for t in "ab"}
rel = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(logs["a"], logs["b"]))
print(json.dumps({"rep": int(r), "device": device, "preset": preset, "k": int(k), "size": int(size),
                  "batch": int(batch), "steps": len(logs["a"]), "a": a, "b": b,
                  "a_step_s": round(med["a"], 4), "b_step_s": round(med["b"], 4),
                  "a_over_b": round(med["a"] / med["b"], 4), "loss_max_rel_diff": rel}))
PY
done
