#!/usr/bin/env bash
# The long training run behind models/codino-tiny-synth (issue 9): `tiny`, K = 1 (ATSS aux
# head + customised positive queries), the recipe of bench/paper_claim.sh, but 8,000 steps
# (32 epochs of the 2,000-image synthetic train split) instead of 500. It takes hours on 2
# CPU cores, so it is resumable: re-run the script and it continues from the newest
# checkpoint (a killed run loses at most CHECKPOINT_EVERY steps). When it has finished,
# `scripts/ship-model.sh RUN_DIR` ships its best checkpoint.
#
# Usage: scripts/train-shipped.sh [RUN_DIR]        (default runs/codino-tiny-synth)
# Env:   STEPS (8000), EVAL_EVERY (500), CHECKPOINT_EVERY (100), BATCH (8), LR (2e-4), K (1),
#        DATA (data/synth; made with `codetr-train synth --out data/synth` if missing),
#        BIN (target/release/codetr-train; built if missing),
#        INIT (a checkpoint to warm-start from, e.g. the shipped models/codino-tiny-synth/
#        model.ckpt: copied to RUN_DIR/init.ckpt so the run stays reproducible after the
#        package is replaced; optimizer, step count and lr schedule start fresh; a step
#        checkpoint of a K = 1 run also brings its training heads),
#        DROPS (0.8: fractions of STEPS after which the lr is ×0.1; "" = constant lr),
#        WARMUP (50), EMA ("" = off; "MOMENTUM,GAMMA", e.g. "0.003,100": validation and
#        best/ then use the weights' exponential moving average, see trainer/src/train/ema.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
run=$(realpath -m "${1:-runs/codino-tiny-synth}")
STEPS=${STEPS:-8000}
EVAL_EVERY=${EVAL_EVERY:-500}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-100}
BATCH=${BATCH:-8}
LR=${LR:-2e-4}
K=${K:-1}
DROPS=${DROPS-0.8}
WARMUP=${WARMUP:-50}
EMA=${EMA:-}
DATA=$(realpath -m "${DATA:-data/synth}")
bin=${BIN:-target/release/codetr-train}
[ -x "$bin" ] || cargo build --release -q -p codetr-train
[ -f "$DATA/val/instances.json" ] || "$bin" synth --out "$DATA"

if ls "$run"/checkpoints/step-*.ckpt >/dev/null 2>&1; then
  echo "== $run: resuming"
  "$bin" fit --resume "$run" --quiet
else
  mkdir -p "$run"
  init_line=
  if [ -n "${INIT:-}" ]; then
    cp "$INIT" "$run/init.ckpt"
    init_line="init = \"$run/init.ckpt\""
  fi
  ema_section=
  if [ -n "$EMA" ]; then
    ema_section=$(printf '[schedule.ema]\nmomentum = %s\ngamma = %s\n' "${EMA%%,*}" "${EMA#*,}")
  fi
  cfg=$(mktemp --suffix=.toml)
  trap 'rm -f "$cfg"' EXIT
  cat > "$cfg" <<EOF
[run]
out = "$run"
seed = 0
workers = 1
checkpoint_every = $CHECKPOINT_EVERY
keep_last = 2
eval_every = $EVAL_EVERY
$init_line

[data]
train = "$DATA/train"
val = "$DATA/val"
val_images = 0

[model]
preset = "tiny"
[model.backbone]
norm = "group_norm"

[schedule]
steps = $STEPS
batch_size = $BATCH
sizes = [256]
lr = $LR
backbone_lr_mult = 1.0
warmup_steps = $WARMUP
lr_drops = [$DROPS]
$ema_section

[co]
k = $K
[co.roi]
samples = 128
fc_dim = 256
EOF
  echo "== $run: starting ($STEPS steps, K = $K${INIT:+, from $INIT})"
  "$bin" fit --config "$cfg" --quiet
fi
"$bin" plot "$run"
