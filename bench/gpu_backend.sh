#!/usr/bin/env bash
# Issue 25's GPU backend decision in one device call: the same training ops at detector sizes,
# forward + backward, on
#   - Burn 0.22.1 wgpu/Vulkan (trainer/benches/gpu_ops.rs, the trainer's own MSDA op),
#   - Burn 0.21.0 CUDA (bench/burn021_ops: the same tensor program with Burn's autodiff, and the
#     product's MSDA kernels ported to 0.21, rows "… kernels", checked against that program),
#   - PyTorch on CUDA (bench/gpu_ops_torch.py, the GPU machine's own torch),
# and the ratios to PyTorch (bench/gpu_backend_summary.py) in $OUT/gpu_backend.json.
#
# Device (after bench/gpu_train_kit.sh; see README "GPU training"): carry [".gputrain", ".gpuval"];
#   source .gputrain/env.sh && OUT=$OUT bash bench/gpu_backend.sh
# CPU rehearsal (small shapes; the 0.22 side on Flex, since Mesa's lavapipe cannot run cubecl's
# SPIR-V (docs/DESIGN.md §12); NdArray for 0.21; torch on CPU):
#   REHEARSAL=1 PYTHON=/path/to/python-with-torch bash bench/gpu_backend.sh
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-$ROOT/bench/results/gpu_backend}
mkdir -p "$OUT"
REHEARSAL=${REHEARSAL:-0}
PY=${PYTHON:-python3}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }

if [ "$REHEARSAL" = 1 ]; then
  size=(--small); reps=2; torch_dev=cpu; vk=${VK_DEVICE:-cpu}; b021=cpu
else
  size=(); reps=5; torch_dev=cuda; vk=${VK_DEVICE:-vulkan}; b021=cuda
fi
# The Vulkan loader and the NVIDIA ICD: .gputrain/env.sh.

pick() { # first existing: $PATH name, then build outputs
  for c in "$(command -v "$1" 2>/dev/null)" "${@:2}"; do [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return; }; done
}
GPU_OPS=${GPU_OPS:-$(pick gpu_ops target/release/gpu_ops)}
B021=${BURN021_OPS:-$(pick burn021-ops bench/burn021_ops/target/release/burn021-ops)}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
  (command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName|apiVersion") || true
} > "$OUT/machine.txt" 2>&1
log "machine: $(tr '\n' ' ' < "$OUT/machine.txt")"

step() { # name limit_s command...
  local name=$1 limit=$2; shift 2
  log "$name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.err"
  local rc=$?
  log "$name: rc=$rc in $((SECONDS - t0)) s, $(wc -l < "$OUT/$name.jsonl") rows"
  [ $rc = 0 ] || tail -5 "$OUT/$name.err" | tee -a "$OUT/log.txt"
}

# The trainer's SPIR-V kernels under the Khronos validation layer (its .deb is .gpuval/, carried
# with this call only; .gputrain/env.sh installs it): cubecl-spirv lowers shared memory with
# VK_KHR_workgroup_memory_explicit_layout on NVIDIA, a path Mesa's lavapipe cannot run (it lacks
# the extension, and the path it takes instead writes invalid SPIR-V: docs/DESIGN.md §12), so
# spirv-val on the device is the first check of what the H200 compiles. Two tiny K = 2 steps.
TRAIN=${CODETR_TRAIN:-$(pick codetr-train target/release/codetr-train)}
if [ -n "$TRAIN" ] && [ -f /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json ]; then
  d=$OUT/spirv_validation
  mkdir -p "$d"
  log "spirv_validation: 2 tiny K = 2 steps on $vk under VK_LAYER_KHRONOS_validation"
  "$TRAIN" synth --out "$d/data" --train 4 --val 2 --test 0 --size 128x128 > /dev/null 2>&1
  t0=$SECONDS
  VK_INSTANCE_LAYERS=VK_LAYER_KHRONOS_validation timeout 180 "$TRAIN" fit --data "$d/data" \
    --k 2 --steps 2 --batch-size 2 --device "$vk" --out "$d/run" --quiet > "$d/fit.log" 2>&1
  rc=$?
  errors=$(grep -c "Validation Error" "$d/fit.log")
  invalid=$(grep -c "SPIR-V module not valid" "$d/fit.log")
  log "spirv_validation: rc=$rc in $((SECONDS - t0)) s, $errors validation errors, $invalid invalid SPIR-V modules"
  grep -m3 -A1 "Validation Error" "$d/fit.log" | tee -a "$OUT/log.txt"
  printf '{"device": "%s", "rc": %d, "validation_errors": %d, "invalid_spirv_modules": %d, "build": "%s"}\n' \
    "$vk" "$rc" "$errors" "$invalid" "$("$TRAIN" --version)" > "$OUT/spirv_validation.json"
  rm -rf "$d/data" "$d/run/checkpoints" "$d/run/best"
else
  log "spirv_validation: skipped (no codetr-train, or no Khronos validation layer: carry .gpuval)"
fi

# Unknown first: Burn on Vulkan has never run on the H200. Both Burns autotune their kernels
# (the first call at each shape times the candidates), which the limits allow for.
if [ -n "$GPU_OPS" ]; then
  step burn022 270 "$GPU_OPS" --device "$vk" "${size[@]}" --reps "$reps"
else log "burn022: no gpu_ops binary (build: cargo bench -p codetr-core --features vulkan --bench gpu_ops --no-run)"; fi
if [ -n "$B021" ]; then
  step burn021 200 "$B021" --device "$b021" "${size[@]}" --reps "$reps"
else log "burn021: no burn021-ops binary (build: cd bench/burn021_ops && cargo build --release --features cuda)"; fi
step torch 120 "$PY" bench/gpu_ops_torch.py --device "$torch_dev" "${size[@]}" --reps "$reps"

"$PY" bench/gpu_backend_summary.py "$OUT" > "$OUT/gpu_backend.json"
log "summary: $OUT/gpu_backend.json"
"$PY" - "$OUT/gpu_backend.json" <<'P' | tee -a "$OUT/log.txt"
import json, sys
s = json.load(open(sys.argv[1]))
for op, by in s["ops"].items():
    if op == "msda_parity":
        for impl, e in by.items():
            print(f"{op:13s} {impl}: max abs diff vs Flex {max(v for k, v in e.items() if k.endswith('diff')):.2e}")
        continue
    cells = []
    for impl, e in sorted(by.items()):
        r = e.get("fwd_bwd_over_torch")
        cells.append(f"{impl}: {e.get('fwd_bwd_s', float('nan')) * 1e3:.1f} ms" + (f" ({r:.2f}x torch)" if r else ""))
    print(f"{op:13s} " + " | ".join(cells))
P
