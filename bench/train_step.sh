#!/usr/bin/env bash
# Training-step time: codetr `tiny` (batch 8, 256², K = 0 and K = 2) against HF transformers'
# DeformableDetr with the same dimensions in PyTorch (bench/train_step_torch.py), same thread
# count, same run. Writes bench/results/train_step.json and prints the ratios.
#
#   REF_PYTHON=/path/to/venv/bin/python bench/train_step.sh      (a venv with
#   tests/reference/requirements.txt + scipy; torch is never installed by CI)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${REF_PYTHON:?set REF_PYTHON to a python with torch, transformers and scipy}"
THREADS=${THREADS:-2}
STEPS=${STEPS:-8}
BIN=${BIN:-target/release/codetr-train}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p codetr-train
[ -f data/synth/train/instances.json ] || "$BIN" synth --out data/synth
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
results=()
for k in 0 2; do
  cat > "$tmp/k$k.toml" <<TOML
[run]
out = "$tmp/run-k$k"
workers = 1
checkpoint_every = 100000
eval_every = 100000
[data]
train = "data/synth/train"
val = "data/synth/val"
val_images = 8
[model]
preset = "tiny"
[schedule]
steps = $STEPS
batch_size = 8
sizes = [256]
[co]
k = $k
TOML
  RAYON_NUM_THREADS=$THREADS "$BIN" fit --config "$tmp/k$k.toml" --quiet >/dev/null 2>&1
  s=$(python3 -c "
import json, statistics, sys
steps = [json.loads(l)['seconds'] for l in open('$tmp/run-k$k/log.jsonl')]
print(statistics.median(steps[2:] if len(steps) > 3 else steps))")
  results+=("$s")
  echo "codetr tiny K=$k: ${s} s/step"
done
peer=$("$REF_PYTHON" bench/train_step_torch.py --threads "$THREADS" --steps "$STEPS")
echo "peer: $peer"
python3 - "$THREADS" "${results[0]}" "${results[1]}" "$peer" <<'PY'
import json, sys
threads, k0, k2, peer = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
p = peer["seconds_per_step"]
out = {
    "bench": "train_step", "threads": threads, "batch": 8, "size": 256,
    "codetr_k0_s": k0, "codetr_k2_s": k2, "peer": peer["impl"], "peer_s": p,
    "k0_over_peer": k0 / p, "k2_over_peer": k2 / p,
}
print(json.dumps(out, indent=1))
with open("bench/results/train_step.json", "w") as f:
    json.dump(out, f, indent=1)
PY
