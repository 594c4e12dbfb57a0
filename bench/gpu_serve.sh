#!/usr/bin/env bash
# Issue 21's GPU serving figures, in one device call (< 9 min on the H200), written to
# $OUT/gpu_serve.json (+ gpu_serve.md, the README section's tables, and log.txt):
#   - paper-r50 800², random weights exported here: raw ONNX Runtime latency at batch 1 and
#     per image at batch 8, fp32/fp16 × grid-sample/gather, and each graph's shape bound;
#   - the shipped tiny model (256²): images/s at batch 1, 8, 32;
#   - where the GPU time goes: ONNX Runtime per-node profiles under CUDA_LAUNCH_BLOCKING=1
#     (paper-r50 b1, tiny b32; bench/gpu_profile.sh has more, and settings side by side);
#   - TF32 on vs off (latency), cuDNN heuristic vs exhaustive search (tiny);
#   - CPU↔CUDA parity and COCO AP through the server, TF32 off and on, fp16 vs fp32, beside
#     the floor (the gather lowering against grid-sample, both on the CPU);
#   - where CPU and CUDA part: every node's output compared (the `drift` bench), on the
#     worst images of that comparison and on 8 others, TF32 off and on; and where the fp16
#     graph parts from the fp32 graph, on the CPU and on CUDA;
#   - codetr-serve ÷ raw ONNX Runtime at saturation (tiny, batch 32);
#   - I/O binding over pinned buffers (the default) vs plain `Session::run`, raw and served;
#   - batch sizes that cannot run (above the graph's 32-bit bound; out of a memory cap): the
#     server stays up and serves the largest that works;
#   - 3 workers: their sessions opened side by side on the provider, each one's time
#     (workers-log.txt).
#
# On the device (binaries and ONNX Runtime from the kit, built by bench/gpu_serve_kit.sh;
# see ../shared/gpu/README.md):
#   source .gpukit/device-env.sh && bench/gpu_serve.sh
# Rehearsal on a CPU machine (every step runs, on the CPU provider, at small sizes):
#   REHEARSAL=1 bench/gpu_serve.sh
# Env: OUT (results dir), WORK (scratch), PROVIDER (cuda), PAPER_SIZE (800), SECS (3 s per
#   timed window), SHIPPED / SHIPPED16 (the shipped model's fp32 / fp16 graphs), DEADLINE (s).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/target/release:$PATH"
REHEARSAL=${REHEARSAL:-0}
OUT=${OUT:-bench/.work/gpu-out}
WORK=${WORK:-/tmp/codetr-gpu}
if [ "$REHEARSAL" = 1 ]; then
  PROVIDER=${PROVIDER:-cpu}; PAPER_SIZE=${PAPER_SIZE:-128}; SECS=${SECS:-1}; VAL=${VAL:-24}
  BIG=${BIG:-4}; TINY_BATCHES=${TINY_BATCHES:-1,8}; FAULT_BATCHES=${FAULT_BATCHES:-1,2,4}
else
  PROVIDER=${PROVIDER:-cuda}; PAPER_SIZE=${PAPER_SIZE:-800}; SECS=${SECS:-2}; VAL=${VAL:-300}
  BIG=${BIG:-8}; TINY_BATCHES=${TINY_BATCHES:-1,8,32}; FAULT_BATCHES=${FAULT_BATCHES:-1,8,16,64}
fi
# The shipped model's graphs are exported here from its checkpoint (the graph files do not
# fit beside the kit in a device call; the checkpoint does).
# The default is the kit's copy when there is one (bench/gpu_serve_kit.sh): under slim.sh the
# tracked checkpoint does not travel.
if [ -z "${SHIPPED_CKPT:-}" ]; then
  SHIPPED_CKPT=models/codino-tiny-synth/model.ckpt
  [ -f .gpukit/extra/model.ckpt ] && SHIPPED_CKPT=.gpukit/extra/model.ckpt
fi
FAULT_MEM_MB=${FAULT_MEM_MB:-24000}
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"
LOG=$OUT/log.txt
: > "$LOG"
t_start=$(date +%s)
step() { echo "== [$(( $(date +%s) - t_start )) s] $*" | tee -a "$LOG" >&2; }
# Each step is bounded, so that one hung step cannot eat the whole device call.
bounded() { local s=$1; shift; timeout "$s" "$@" >>"$LOG" 2>&1; local rc=$?; [ $rc = 0 ] || echo "   (exit $rc: $*)" | tee -a "$LOG" >&2; return $rc; }
raw() { bounded "$1" raw_ort "${@:2}"; }
ready() { # port pid
  python3 - "$1" "$2" <<'PY'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
for _ in range(int(os.environ.get("READY_S", "150")) * 4):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            if r.status == 200: sys.exit(0)
    except Exception:
        pass
    try: os.kill(pid, 0)
    except OSError: sys.exit(1)
    time.sleep(0.25)
sys.exit(1)
PY
}
get() { python3 -c "import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())" "$1"; }

step "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; nproc; } > "$WORK/machine.txt"
cat "$WORK/machine.txt" >>"$LOG"

step "data: the shipped model's val split (synthetic, seed 0, 256²), $VAL images"
bounded 120 codetr-train synth --out "$WORK/synth" --train 0 --val "$VAL" --seed 0 --size 256x256

step "graphs: the shipped model (fp32, fp16) from $SHIPPED_CKPT"
SHIPPED=$WORK/tiny.onnx; SHIPPED16=$WORK/tiny-fp16.onnx
bounded 120 codetr-export --checkpoint "$SHIPPED_CKPT" --out "$SHIPPED"
bounded 120 codetr-export --checkpoint "$SHIPPED_CKPT" --out "$SHIPPED16" --fp16
# The same model with the other MSDA lowering: on the CPU, the floor under the parity figures
# (two correct fp32 computations; bench/results/parity_floor.json).
SHIPPED_GATHER=$WORK/tiny-gather.onnx
bounded 120 codetr-export --checkpoint "$SHIPPED_CKPT" --out "$SHIPPED_GATHER" --msda gather

step "graphs: paper-r50 ${PAPER_SIZE}², random weights, fp32/fp16 × grid-sample/gather"
printf '{"images":[],"annotations":[],"categories":[%s]}\n' \
  "$(for i in $(seq 1 80); do printf '{"id":%d,"name":"c%d"}' "$i" "$i"; [ "$i" -lt 80 ] && printf ,; done)" > "$WORK/coco80.json"
if [ "$PAPER_SIZE" = 800 ]; then cfgarg=(--preset paper-r50); else
  printf 'preset = "paper-r50"\ninput_size = %s\n' "$PAPER_SIZE" > "$WORK/paper.toml"; cfgarg=(--config "$WORK/paper.toml"); fi
bounded 300 codetr-train init "${cfgarg[@]}" --classes-from "$WORK/coco80.json" --out "$WORK/paper.ckpt" --seed 1
for v in grid-sample:fp32 grid-sample:fp16 gather:fp32 gather:fp16; do
  m=${v%%:*}; p=${v##*:}; f=(); [ "$p" = fp16 ] && f=(--fp16)
  ( timeout 300 codetr-export --checkpoint "$WORK/paper.ckpt" --out "$WORK/paper-$m-$p.onnx" --msda "$m" "${f[@]}" --serve-batch "$BIG" --json \
      > "$WORK/export-$m-$p.json" 2>>"$LOG" ) &
done
wait
rm -f "$WORK/paper.ckpt"

step "paper-r50: raw ONNX Runtime at batch 1 and $BIG ($PROVIDER)"
for v in grid-sample-fp32 grid-sample-fp16 gather-fp32 gather-fp16; do
  [ -f "$WORK/paper-$v.onnx" ] || continue
  raw 150 --model "$WORK/paper-$v.onnx" --providers "$PROVIDER" --batch "1,$BIG" --seconds "$SECS" --json "$WORK/raw-paper-$v.json"
done

step "paper-r50 fp32 grid-sample with TF32 on (batch 1 and $BIG)"
raw 120 --model "$WORK/paper-grid-sample-fp32.onnx" --providers "$PROVIDER" --cuda-tf32 true --batch "1,$BIG" --seconds "$SECS" --json "$WORK/raw-paper-fp32-tf32.json"

step "tiny (shipped): raw ONNX Runtime at batch $TINY_BATCHES; fp16; heuristic search"
raw 120 --model "$SHIPPED" --providers "$PROVIDER" --batch "$TINY_BATCHES" --seconds "$SECS" --json "$WORK/raw-tiny.json"
[ -f "$SHIPPED16" ] && raw 120 --model "$SHIPPED16" --providers "$PROVIDER" --batch "$TINY_BATCHES" --seconds "$SECS" --json "$WORK/raw-tiny-fp16.json"
printf '[runtime]\ncuda_conv_algo = "heuristic"\n' > "$WORK/heur.toml"
raw 120 --model "$SHIPPED" --config "$WORK/heur.toml" --providers "$PROVIDER" --batch "$TINY_BATCHES" --seconds "$SECS" --json "$WORK/raw-tiny-heuristic.json"

step "GPU-time profiles (CUDA_LAUNCH_BLOCKING=1): paper-r50 fp32 batch 1, tiny batch ${TINY_BATCHES##*,}"
mkdir -p "$WORK/prof"
prof() { # name model batch
  CUDA_LAUNCH_BLOCKING=1 raw 90 --model "$2" --providers "$PROVIDER" --batch "$3" --seconds 1 --profile "$WORK/prof/$1" --json "$WORK/prof-$1.json"
  local f; f=$(python3 -c "import json,sys; p=json.load(open(sys.argv[1]))['profiles']; print(p[0] if p else '')" "$WORK/prof-$1.json" 2>/dev/null)
  [ -n "$f" ] && [ -f "$f" ] && python3 bench/ort_profile.py "$f" --skip 3 > "$WORK/prof-$1.summary.json" 2>>"$LOG"
  rm -f "$f"
}
prof paper-fp32-b1 "$WORK/paper-grid-sample-fp32.onnx" 1
prof "tiny-b${TINY_BATCHES##*,}" "$SHIPPED" "${TINY_BATCHES##*,}"

step "parity and COCO AP through codetr-serve: cpu, $PROVIDER TF32 off/on, fp16"
port=18300
parity_run() { # name model provider [flags...]
  local name=$1 model=$2 prov=$3; shift 3
  env ${PARITY_ENV:-} codetr-serve --model "$model" --bind 127.0.0.1:$port --providers "$prov" --max-batch-size 8 "$@" > "$WORK/serve-$name.log" 2>&1 &
  local pid=$!
  if ready $port $pid; then
    bounded 300 python3 bench/gpu_parity.py detect --url http://127.0.0.1:$port --data "$WORK/synth/val" --out "$WORK/det-$name.json" --clients 16
    timeout 60 codetr-train eval --gt "$WORK/synth/val/instances.json" --dt "$WORK/det-$name.coco.json" --json > "$WORK/ap-$name.json" 2>>"$LOG"
  else
    echo "   server $name never became ready" | tee -a "$LOG" >&2; tail -5 "$WORK/serve-$name.log" >>"$LOG"
  fi
  kill $pid 2>/dev/null; wait $pid 2>/dev/null
  port=$((port + 1))
}
parity_run cpu "$SHIPPED" cpu
[ -f "$SHIPPED_GATHER" ] && parity_run cpu-gather "$SHIPPED_GATHER" cpu
parity_run gpu "$SHIPPED" "$PROVIDER" --cuda-tf32 false
parity_run gpu-tf32 "$SHIPPED" "$PROVIDER" --cuda-tf32 true
# cuDNN's CUDNN_DEFAULT_MATH allows TF32 on Ampere and later whatever ONNX Runtime's use_tf32
# says; NVIDIA_TF32_OVERRIDE=0 turns it off in cuDNN and cuBLAS alike (the suspect for the
# drift left with --cuda-tf32 false).
PARITY_ENV=NVIDIA_TF32_OVERRIDE=0 parity_run gpu-no-tf32-env "$SHIPPED" "$PROVIDER" --cuda-tf32 false
[ -f "$SHIPPED16" ] && parity_run gpu-fp16 "$SHIPPED16" "$PROVIDER"
# The fp16 graph on the CPU: how far fp16 compute alone moves the scores (the floor under
# gpu-fp16's figure, measured without a GPU in bench/results/fp16_drift_cpu.json).
[ -f "$SHIPPED16" ] && parity_run cpu-fp16 "$SHIPPED16" cpu
for b in cpu-gather gpu gpu-tf32 gpu-no-tf32-env gpu-fp16 cpu-fp16; do
  [ -f "$WORK/det-$b.json" ] && python3 bench/gpu_parity.py compare "$WORK/det-cpu.json" "$WORK/det-$b.json" > "$WORK/parity-$b.json" 2>>"$LOG"
done
# Into the log as well: it comes back even if a later step runs out of time.
for f in "$WORK"/parity-*.json "$WORK"/ap-*.json; do [ -f "$f" ] && echo "$(basename "$f"): $(cat "$f")" >>"$LOG"; done

step "where CPU and $PROVIDER part: every node's output compared (drift), TF32 off and on"
# On the images the served comparison found worst (near-tied query selections flip between
# any two fp32 computations: Burn and ONNX Runtime on the CPU part by 1.15e-2 on one val
# image, parity_floor.json) and on the first 8 val images: whether the selection's top-k
# indices differ, and which nodes add drift before it.
worst=$(python3 bench/gpu_parity.py worst "$WORK/parity-gpu.json" --data "$WORK/synth/val" --count 2 2>>"$LOG")
drift_run() { # name images count [flags...]
  bounded 100 drift --model "$SHIPPED" --images "$2" --count "$3" --a cpu --b "$PROVIDER" "${@:4}" --json "$WORK/drift-$1.json"
}
[ -n "$worst" ] && drift_run worst "$worst" 2 --b-tf32 false
drift_run first8 "$WORK/synth/val/images" 8 --b-tf32 false
drift_run first8-tf32 "$WORK/synth/val/images" 8 --b-tf32 true
# fp16: the fp16 graph against the fp32 graph, tensor by tensor (the rewrite keeps names), on
# the CPU (what fp16 itself costs) and on the provider (what the provider's fp16 kernels add).
if [ -f "$SHIPPED16" ]; then
  drift_run fp16-cpu "$WORK/synth/val/images" 8 --model-b "$SHIPPED16" --b cpu
  drift_run fp16 "$WORK/synth/val/images" 8 --model-b "$SHIPPED16" --b-tf32 false
fi

step "saturation: codetr-serve (tiny, batch ${TINY_BATCHES##*,}) vs raw ONNX Runtime at the same batch"
BMAX=${TINY_BATCHES##*,}
saturate() { # name port [server flags...]
  local name=$1 port=$2; shift 2
  codetr-serve --model "$SHIPPED" --bind 127.0.0.1:$port --providers "$PROVIDER" --max-batch-size "$BMAX" \
    --max-queue-size 512 --max-queue-delay-us 2000 "$@" > "$WORK/serve-$name.log" 2>&1 &
  local pid=$!
  if ready $port $pid; then
    bounded 120 codetr-loadtest --url http://127.0.0.1:$port --images "$WORK/synth/val/images" \
      --concurrency "$((BMAX * 2)),$((BMAX * 4))" --duration "$((SECS * 2))" --warmup 2 --json "$WORK/$name.json"
    get http://127.0.0.1:$port/metrics > "$WORK/$name-metrics.txt" 2>>"$LOG"
  fi
  kill $pid 2>/dev/null; wait $pid 2>/dev/null
}
saturate sat 18400
raw 60 --model "$SHIPPED" --providers "$PROVIDER" --batch "$BMAX" --seconds "$((SECS * 2))" --json "$WORK/raw-sat.json"

# A first summary now, so that the figures so far come back even if the last step overruns.
python3 bench/gpu_summary.py "$WORK" "$OUT" "$PROVIDER" "$PAPER_SIZE" "$BIG" "$TINY_BATCHES" >/dev/null 2>>"$LOG"

step "batch sizes that cannot run: paper-r50 fp32, batch sizes $FAULT_BATCHES, GPU memory capped at $FAULT_MEM_MB MiB"
# 64 is above the graph's 32-bit bound (codetr.max_batch): dropped before it runs. The memory
# cap makes a size within the bound run out of memory at warm-up: dropped, the server serves
# the largest size that worked.
timeout 200 codetr-serve --model "$WORK/paper-grid-sample-fp32.onnx" --bind 127.0.0.1:18500 --providers "$PROVIDER" \
  --batch-sizes "$FAULT_BATCHES" --max-batch-size "${FAULT_BATCHES##*,}" --cuda-memory-limit-mb "$FAULT_MEM_MB" > "$WORK/serve-fault.log" 2>&1 &
pid=$!
if ready 18500 $pid; then
  get http://127.0.0.1:18500/v1/models > "$WORK/fault-models.json" 2>>"$LOG"
  get http://127.0.0.1:18500/metrics | grep -E '^codetr_(max_batch_size|warmup_failures_total|ready)' > "$WORK/fault-metrics.txt"
  python3 bench/gpu_parity.py detect --url http://127.0.0.1:18500 --data "$WORK/synth/val" --out "$WORK/det-fault.json" --clients 4 >>"$LOG" 2>&1 \
    && echo ok > "$WORK/fault-served.txt"
else
  echo "   the fault server never became ready" | tee -a "$LOG" >&2
fi
kill $pid 2>/dev/null; wait $pid 2>/dev/null
grep -E "BATCH SIZE DROPPED|ready with|warm-up|Error" "$WORK/serve-fault.log" | cut -c1-700 > "$WORK/fault-log.txt"
tail -c 20000 "$WORK/serve-fault.log" > "$OUT/serve-fault.log"

step "workers: 3 sessions of the shipped graph on $PROVIDER, the two after the first opened side by side"
# ONNX Runtime does not document concurrent session creation (codetr-serve's open_sessions):
# this is where a provider that cannot take it would show, as an error or a server that never
# gets ready. The log keeps each session's time.
codetr-serve --model "$SHIPPED" --bind 127.0.0.1:18700 --providers "$PROVIDER" --workers 3 \
  --max-batch-size 8 > "$WORK/serve-workers.log" 2>&1 &
pid=$!
if ready 18700 $pid; then
  get http://127.0.0.1:18700/v1/models > "$WORK/workers-models.json" 2>>"$LOG" && echo ok > "$WORK/workers-ready.txt"
else
  echo "   the 3-worker server never became ready" | tee -a "$LOG" >&2
fi
kill $pid 2>/dev/null; wait $pid 2>/dev/null
grep -E "model loaded|worker sessions opened|Error|error" "$WORK/serve-workers.log" | cut -c1-700 | tee "$OUT/workers-log.txt" >>"$LOG"

step "I/O binding with pinned buffers (the default) vs plain Session::run: raw paper-r50 fp32 b1/$BIG, raw tiny b$BMAX, server at saturation"
# Last, so that a call running out of time loses only this comparison.
raw 120 --model "$WORK/paper-grid-sample-fp32.onnx" --providers "$PROVIDER" --io-binding false --batch "1,$BIG" --seconds "$SECS" --json "$WORK/raw-paper-plain.json"
raw 60 --model "$SHIPPED" --providers "$PROVIDER" --io-binding false --batch "$BMAX" --seconds "$((SECS * 2))" --json "$WORK/raw-sat-plain.json"
saturate sat-plain 18600 --io-binding false

step "summary"
python3 bench/gpu_summary.py "$WORK" "$OUT" "$PROVIDER" "$PAPER_SIZE" "$BIG" "$TINY_BATCHES" 2>&1 | tee -a "$LOG"
step "done"
