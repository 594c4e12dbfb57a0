#!/usr/bin/env bash
# Issue 24: the paper's claim on one GPU, beyond seed noise. `tiny` on the synthetic set,
# K = 0, 1, 2 and Table 9's ablations at K = 1 (aux loss without positive queries, positive
# queries without the aux loss), SEEDS seeds each (default 3: 15 runs), the same steps,
# batch and schedule for all, ALL RUNS SIDE BY SIDE on the one device (the GPU is shared;
# a run per process). Every EVAL_EVERY steps each run evaluates, on its device, the val split
# (which picks best/) and the held-out test split (the only numbers reported). Ends with
# $OUT/paper_claim_gpu.md: test AP per arm (mean ± std, n), AP curves over steps, and for
# each comparison whether the difference exceeds 2 standard errors.
#
# Time: the device lends ~15 minutes in all, at most 10 per call. STEPS=auto (default on the
# device) first runs every arm for CAL_STEPS steps side by side, measures the slowest arm's
# step time and eval time under that load, and sizes STEPS so that training and evals fit
# BUDGET_S seconds. DEADLINE_S (from the script's start) stops whatever still runs, so the
# summary and the files always come back.
#
# Resumable: re-running on the same machine skips finished runs and resumes unfinished ones
# from their newest checkpoint. Across device calls, what comes back ($OUT: at most 8 files of
# 16 MiB) is runs.tar.gz, every run's config, logs and evals and the pinned plan (steps, eval
# interval). Carry it back in a folder named by RESTORE=folder: the plan is kept (no new
# calibration), finished runs are skipped, more SEEDS add runs under the same plan, and
# unfinished runs restart from step 0. Their training state cannot come back: one `tiny` run's
# checkpoint (weights, AdamW moments, aux heads) is 54–61 MB, over one returned file, and 15
# runs' ~0.9 GB is 14× all of them. Hence STEPS=auto: size the protocol to finish in one call.
#
# Device (after `FEATURE=vulkan bench/gpu_train_kit.sh`; see README "GPU training"):
#   carry [".gputrain"]; source .gputrain/env.sh && OUT=$OUT DEVICE=vulkan bash bench/paper_claim_gpu.sh
# CPU rehearsal (the whole protocol for a few steps, small data, 2 runs at a time):
#   REHEARSAL=1 bash bench/paper_claim_gpu.sh
# Env: DEVICE (vulkan; cpu in a rehearsal), BIN (codetr-train on PATH, else target/release),
#   SEEDS ("0 1 2"), ARMS ("k0 k1 k2 k1-noaux k1-nopq"), STEPS (auto | N), EVAL_EVERY (STEPS/8),
#   BUDGET_S (400), DEADLINE_S (560), CAL_STEPS (8), PARALLEL (0 = all runs at once), BATCH (8),
#   LR (2e-4), VAL_IMAGES / TEST_IMAGES (0 = all 300), WORK (/tmp/codetr-claim), RESTORE.
# Recipe: bench/paper_claim.sh's (issue 9): GroupNorm backbone at lr ×1, lr 2e-4, 50 warm-up
# steps, ×0.1 at 80 %; K = 2 with 128 sampled RoIs and a 256-wide RoI head.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T0=$SECONDS
OUT=${OUT:-$ROOT/bench/results/paper_claim_gpu}
WORK=${WORK:-/tmp/codetr-claim}
REHEARSAL=${REHEARSAL:-0}
mkdir -p "$OUT" "$WORK/runs"
log() { echo "[$(date +%T) +$((SECONDS - T0))s] $*" | tee -a "$OUT/log.txt"; }
pick() { for c in "$(command -v "$1" 2>/dev/null)" "${@:2}"; do [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return; }; done; }
BIN=${BIN:-$(pick codetr-train target/release/codetr-train)}
[ -n "$BIN" ] || { log "no codetr-train binary (build it, or source the kit's env.sh)"; exit 2; }
PY=${PYTHON:-python3}

if [ "$REHEARSAL" = 1 ]; then
  DEVICE=${DEVICE:-cpu}; STEPS=${STEPS:-4}; EVAL_EVERY=${EVAL_EVERY:-2}; PARALLEL=${PARALLEL:-2}
  SYNTH=(--train 48 --val 12 --test 12); BUDGET_S=${BUDGET_S:-1500}; DEADLINE_S=${DEADLINE_S:-3000}
  WARMUP=1
else
  DEVICE=${DEVICE:-vulkan}; STEPS=${STEPS:-auto}; EVAL_EVERY=${EVAL_EVERY:-auto}; PARALLEL=${PARALLEL:-0}
  SYNTH=(--train 2000 --val 300 --test 300); BUDGET_S=${BUDGET_S:-400}; DEADLINE_S=${DEADLINE_S:-560}
  WARMUP=50
fi
SEEDS=${SEEDS:-0 1 2}
ARMS=${ARMS:-k0 k1 k2 k1-noaux k1-nopq}
CAL_STEPS=${CAL_STEPS:-8}
BATCH=${BATCH:-8}
LR=${LR:-2e-4}
VAL_IMAGES=${VAL_IMAGES:-0}
TEST_IMAGES=${TEST_IMAGES:-0}
cores=$(nproc)

arm_args() { # arm → "k positive_queries aux_loss"
  case $1 in
    k0) echo "0 true true" ;;
    k1) echo "1 true true" ;;
    k2) echo "2 true true" ;;
    k1-noaux) echo "1 true false" ;;
    k1-nopq) echo "1 false true" ;;
    *) return 1 ;;
  esac
}
for a in $ARMS; do arm_args "$a" >/dev/null || { log "unknown arm '$a' (k0 k1 k2 k1-noaux k1-nopq)"; exit 2; }; done
RUNS=()
for a in $ARMS; do for s in $SEEDS; do RUNS+=("$a-s$s"); done; done
[ "$PARALLEL" -gt 0 ] 2>/dev/null || PARALLEL=${#RUNS[@]}
# CPU threads per process: the runs share the machine's cores
export RAYON_NUM_THREADS=$(( cores / PARALLEL > 0 ? cores / PARALLEL : 1 ))
log "device $DEVICE, binary $BIN, ${#RUNS[@]} runs (${ARMS// /,} × seeds ${SEEDS// /,}), $PARALLEL at a time, $cores cores"

# --- restore a previous call's plan, logs and state ---
if [ -n "${RESTORE:-}" ]; then
  [ -f "$RESTORE/runs.tar.gz" ] || { log "RESTORE=$RESTORE has no runs.tar.gz"; exit 2; }
  tar -C "$WORK" -xzf "$RESTORE/runs.tar.gz" && log "restored runs.tar.gz from $RESTORE"
fi

# --- data: the same bytes as `codetr-train synth` gives anywhere (a pure function of the seed) ---
DATA=$WORK/synth
if [ ! -f "$DATA/test/instances.json" ]; then
  "$BIN" synth --out "$DATA" "${SYNTH[@]}" --seed 0 > "$WORK/synth.log" 2>&1 \
    || { log "synth failed: $(tail -2 "$WORK/synth.log")"; exit 1; }
fi
log "data: $(grep -c . "$WORK/synth.log" 2>/dev/null) lines of synth stats; $(ls "$DATA"/train/images | wc -l) train images"

config() { # name steps eval_every out → a fit TOML on stdout
  local name=$1 steps=$2 every=$3 out=$4 arm=${1%-s*} seed=${1##*-s} k pq aux
  read -r k pq aux <<< "$(arm_args "$arm")"
  cat <<EOF
[run]
out = "$out"
seed = $seed
device = "$DEVICE"
workers = 1
checkpoint_every = $(( every > 0 ? every : steps ))
keep_last = 1
eval_every = $every

[data]
train = "$DATA/train"
val = "$DATA/val"
val_images = $VAL_IMAGES
test = "$DATA/test"
test_images = $TEST_IMAGES

[model]
preset = "tiny"
[model.backbone]
norm = "group_norm"

[schedule]
steps = $steps
batch_size = $BATCH
sizes = [256]
lr = $LR
backbone_lr_mult = 1.0
warmup_steps = $WARMUP
lr_drops = [0.8]

[co]
k = $k
positive_queries = $pq
aux_loss = $aux
[co.roi]
samples = 128
fc_dim = 256
EOF
}

# run_all DIR STEPS EVERY LIMIT_S: every run in DIR side by side (PARALLEL at a time); each
# resumes if it has a checkpoint, is skipped if finished; all are killed at LIMIT_S seconds
# from the script's start. Each run's wall time goes to DIR/NAME.wall.
run_all() {
  local dir=$1 steps=$2 every=$3 limit=$4 pids=() name
  for name in "${RUNS[@]}"; do
    local run=$dir/$name
    if [ -f "$run/eval.jsonl" ] && grep -q "\"step\":$steps[,}]" "$run/eval.jsonl"; then continue; fi
    while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
    local left=$(( limit - (SECONDS - T0) ))
    [ "$left" -gt 5 ] || { log "$name: no time left, not started"; continue; }
    (
      t=$SECONDS
      if ls "$run"/checkpoints/step-*.ckpt >/dev/null 2>&1; then
        timeout -s KILL "$left" "$BIN" fit --resume "$run" --quiet >> "$dir/$name.log" 2>&1
      else
        rm -rf "$run"
        config "$name" "$steps" "$every" "$run" > "$dir/$name.toml"
        timeout -s KILL "$left" "$BIN" fit --config "$dir/$name.toml" --quiet >> "$dir/$name.log" 2>&1
      fi
      rc=$?
      echo $((SECONDS - t)) > "$dir/$name.wall"
      [ $rc = 0 ] || echo "$name: exit $rc: $(grep -v '^\s*$' "$dir/$name.log" | tail -1)" >> "$OUT/log.txt"
    ) &
    pids+=($!)
  done
  [ ${#pids[@]} = 0 ] || wait "${pids[@]}"
}

# --- the plan: pinned in WORK/runs/plan.json so a resumed protocol never changes it ---
PLAN=$WORK/runs/plan.json
if [ -f "$PLAN" ]; then
  read -r STEPS EVAL_EVERY < <("$PY" -c 'import json,sys; p=json.load(open(sys.argv[1])); print(p["steps"], p["eval_every"])' "$PLAN")
  log "plan (kept): $STEPS steps, eval every $EVAL_EVERY"
else
  if [ "$STEPS" = auto ]; then
    # every run for CAL_STEPS steps, side by side, then one eval of val + test (the last step
    # always evaluates): the slowest run's step time (the 75th percentile after 2 warm-up
    # steps: a K = 2 step grows as the RPN starts to find objects) and (wall − training) per
    # eval; with more runs than PARALLEL they go in waves, each paying the whole schedule
    cal=$WORK/calibration
    rm -rf "$cal"; mkdir -p "$cal"
    run_all "$cal" "$CAL_STEPS" 0 "$DEADLINE_S"
    waves=$(( (${#RUNS[@]} + PARALLEL - 1) / PARALLEL ))
    read -r STEPS EVAL_EVERY < <("$PY" - "$cal" "$BUDGET_S" "$CAL_STEPS" "$waves" <<'P' 2>>"$OUT/log.txt"
import json, statistics, sys
from pathlib import Path
cal, budget, n, waves = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
worst_step = worst_eval = 0.0
for log in cal.glob("*/log.jsonl"):
    secs = [json.loads(l)["seconds"] for l in log.read_text().splitlines() if l.strip()]
    wall = cal / (log.parent.name + ".wall")
    if len(secs) < n or not wall.exists():
        continue
    steady = sorted(secs[2:] or secs)
    step = steady[min(len(steady) - 1, (3 * len(steady)) // 4)]
    worst_step = max(worst_step, step)
    worst_eval = max(worst_eval, float(wall.read_text()) - sum(secs))
if worst_step == 0:
    sys.exit("calibration: no run finished")
evals = 8  # evaluations per run: the AP curve's points
steps = int((budget / waves - (evals + 1) * worst_eval) / worst_step) // evals * evals
print(max(steps, 0), max(steps // evals, 0))
print(f"calibration: slowest step {worst_step:.3f} s, eval+startup {worst_eval:.1f} s under load, "
      f"{waves} wave(s) of runs", file=sys.stderr)
P
)
    [ "${STEPS:-0}" -gt 0 ] 2>/dev/null || { log "calibration left no steps within BUDGET_S=$BUDGET_S (see above)"; exit 1; }
  fi
  [ "$EVAL_EVERY" = auto ] && EVAL_EVERY=$(( STEPS / 8 > 0 ? STEPS / 8 : 1 ))
  printf '{"steps": %d, "eval_every": %d, "device": "%s", "seeds": "%s", "arms": "%s", "batch": %d, "lr": %s}\n' \
    "$STEPS" "$EVAL_EVERY" "$DEVICE" "$SEEDS" "$ARMS" "$BATCH" "$LR" > "$PLAN"
  log "plan: $STEPS steps, eval every $EVAL_EVERY (budget $BUDGET_S s)"
fi

# --- the protocol ---
run_all "$WORK/runs" "$STEPS" "$EVAL_EVERY" "$DEADLINE_S"
log "training done or stopped; summarising"

# --- what comes back: the summary and every run's logs (small) ---
"$PY" bench/paper_claim_summary.py "$WORK/runs" "$STEPS" --out "$OUT/paper_claim_gpu.md" \
  --json "$OUT/summary.json" --png "$OUT/curves.png" 2>&1 | tail -40 | tee -a "$OUT/log.txt"
(cd "$WORK" && tar -czf "$OUT/runs.tar.gz" runs/plan.json runs/*.toml runs/*.log runs/*.wall \
  runs/*/config.toml runs/*/log.jsonl runs/*/eval.jsonl 2>/dev/null)
log "done in $((SECONDS - T0)) s; $OUT: $(ls "$OUT" | tr '\n' ' ')"
