#!/usr/bin/env bash
# Where the GPU time goes: ONNX Runtime per-node profiles with CUDA_LAUNCH_BLOCKING=1 (each
# kernel launch waits for the kernel, so the host-side node times ORT records become GPU
# times; without it they are launch times only), and session settings side by side.
# Writes $OUT/gpu_profile.json. On the device: source .gpukit/device-env.sh && bench/gpu_profile.sh
# Rehearsal: REHEARSAL=1 bench/gpu_profile.sh (CPU provider, small sizes).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/target/release:$PATH"
REHEARSAL=${REHEARSAL:-0}
OUT=${OUT:-bench/.work/gpu-profile-out}
WORK=${WORK:-/tmp/codetr-gpu-profile}
if [ "$REHEARSAL" = 1 ]; then PROVIDER=${PROVIDER:-cpu}; SIZE=${SIZE:-128}; BIG=${BIG:-4}; TB=${TB:-8}
else PROVIDER=${PROVIDER:-cuda}; SIZE=${SIZE:-800}; BIG=${BIG:-8}; TB=${TB:-32}; fi
SHIPPED_CKPT=${SHIPPED_CKPT:-models/codino-tiny-synth/model.ckpt}
mkdir -p "$OUT" "$WORK/prof"
LOG=$OUT/profile-log.txt; : > "$LOG"
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 )) s] $*" | tee -a "$LOG" >&2; }
raw() { timeout "$1" raw_ort "${@:2}" >>"$LOG" 2>&1 || echo "   (failed: ${*:2})" | tee -a "$LOG" >&2; }

step "graphs"
printf '{"images":[],"annotations":[],"categories":[%s]}\n' \
  "$(for i in $(seq 1 80); do printf '{"id":%d,"name":"c%d"}' "$i" "$i"; [ "$i" -lt 80 ] && printf ,; done)" > "$WORK/coco80.json"
printf 'preset = "paper-r50"\ninput_size = %s\n' "$SIZE" > "$WORK/paper.toml"
timeout 120 codetr-train init --config "$WORK/paper.toml" --classes-from "$WORK/coco80.json" --out "$WORK/paper.ckpt" --seed 1 >>"$LOG" 2>&1
for v in grid-sample:fp32 grid-sample:fp16 gather:fp16; do
  m=${v%%:*}; p=${v##*:}; f=(); [ "$p" = fp16 ] && f=(--fp16)
  timeout 120 codetr-export --checkpoint "$WORK/paper.ckpt" --out "$WORK/paper-$m-$p.onnx" --msda "$m" "${f[@]}" >>"$LOG" 2>&1 &
done
timeout 120 codetr-export --checkpoint "$SHIPPED_CKPT" --out "$WORK/tiny.onnx" >>"$LOG" 2>&1 &
wait

step "GPU-time profiles (CUDA_LAUNCH_BLOCKING=1)"
printf '[runtime]\ncuda_prefer_nhwc = true\n' > "$WORK/nhwc.toml"
prof() { # name model batch [args]
  local name=$1 model=$2 b=$3; shift 3
  CUDA_LAUNCH_BLOCKING=1 raw 90 --model "$model" --providers "$PROVIDER" --batch "$b" --seconds 1 --profile "$WORK/prof/$name" --json "$WORK/p-$name.json" "$@"
  local f; f=$(python3 -c "import json,sys; p=json.load(open(sys.argv[1]))['profiles']; print(p[0] if p else '')" "$WORK/p-$name.json" 2>/dev/null)
  [ -n "$f" ] && python3 bench/ort_profile.py "$f" --skip 3 --top 25 > "$WORK/s-$name.json" 2>>"$LOG"
}
prof paper-fp32-b1 "$WORK/paper-grid-sample-fp32.onnx" 1
prof paper-fp16-nhwc-b1 "$WORK/paper-grid-sample-fp16.onnx" 1 --config "$WORK/nhwc.toml"
prof tiny-b1 "$WORK/tiny.onnx" 1
prof tiny-b$TB "$WORK/tiny.onnx" "$TB"

step "settings side by side (batch 1 and $BIG)"
printf '[runtime]\ncuda_arena = "next-power-of-two"\n' > "$WORK/pow2.toml"
printf '[runtime]\ncuda_prefer_nhwc = true\ncuda_tf32 = true\n' > "$WORK/nhwc-tf32.toml"
raw 60 --model "$WORK/paper-grid-sample-fp32.onnx" --providers "$PROVIDER" --batch "1,$BIG" --seconds 1 --config "$WORK/pow2.toml" --json "$WORK/m-fp32-pow2.json"
raw 60 --model "$WORK/paper-grid-sample-fp32.onnx" --providers "$PROVIDER" --batch "1,$BIG" --seconds 1 --config "$WORK/nhwc.toml" --json "$WORK/m-fp32-nhwc.json"
raw 60 --model "$WORK/paper-grid-sample-fp32.onnx" --providers "$PROVIDER" --batch "1,$BIG" --seconds 1 --config "$WORK/nhwc-tf32.toml" --json "$WORK/m-fp32-nhwc-tf32.json"
raw 60 --model "$WORK/paper-gather-fp16.onnx" --providers "$PROVIDER" --batch "1,$BIG" --seconds 1 --config "$WORK/nhwc.toml" --json "$WORK/m-gather16-nhwc.json"

step "summary"
python3 - "$WORK" "$OUT" <<'PY' | tee -a "$LOG"
import json, os, sys
w, out = sys.argv[1], sys.argv[2]
res = {"profiles": {}, "settings": {}}
for f in sorted(os.listdir(w)):
    p = os.path.join(w, f)
    try:
        d = json.load(open(p))
    except Exception:
        continue
    if f.startswith("s-"):
        res["profiles"][f[2:-5]] = d
    elif f.startswith("m-"):
        res["settings"][f[2:-5]] = [{k: r.get(k) for k in ("batch", "run_ms_p50", "per_image_ms_p50", "images_per_s", "error")} for r in d["results"]]
json.dump(res, open(os.path.join(out, "gpu_profile.json"), "w"), indent=1)
for k, v in res["profiles"].items():
    print(k, "run", round(v["run_ms_mean"] or 0, 1), "ms; ops", list(v["ops_ms_per_run"].items())[:10])
for k, v in res["settings"].items():
    print(k, [(r["batch"], r["run_ms_p50"] and round(r["run_ms_p50"], 1)) for r in v])
PY
step "done"
