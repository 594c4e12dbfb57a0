#!/usr/bin/env bash
# The `vulkan` build's SPIR-V kernels (what a GPU node runs) on Mesa's lavapipe, here.
#
# cubecl-spirv 0.11.3 (Burn 0.22.1's SPIR-V compiler) lowers shared memory two ways: with
# VK_KHR_workgroup_memory_explicit_layout (NVIDIA has it) or, without it, through
# `lower_shared_implicit`, which swaps the variable's type and its address's type: each shared
# array becomes a Workgroup variable of pointer-to-pointer type, invalid SPIR-V that lavapipe
# (no such extension) segfaults on at the first matmul. `codetr-train` refuses such a device
# (docs/DESIGN.md §12). This script builds the GPU tests of codetr-core and codetr-train
# (release test profile, `--features codetr-train/vulkan`) against patched copies made here
# from the registry's sources, through `--config patch` (Cargo.lock is restored afterwards):
#   - cubecl-spirv with that swap undone (two arguments);
#   - cubecl-wgpu with one switch added: CODETR_FORCE_EXPLICIT_SMEM makes it take the
#     explicit-layout lowering that NVIDIA gets, although lavapipe does not advertise it.
# and runs them on `vulkan-cpu` (CODETR_VULKAN_IMPLICIT_SHARED=1 lets the device open) in each
# ARM (default: all three):
#   implicit22   the system's lavapipe (Debian 12: 22.3.6), the fixed implicit lowering;
#   implicit25   bookworm-backports' lavapipe 25.0.7 (downloaded into WORK; needs the
#                backports source), the fixed implicit lowering;
#   explicit25   lavapipe 25.0.7, the explicit-layout lowering.
# AUTOTUNE (default minimal) is CUBECL_AUTOTUNE_LEVEL: the `vulkan` build autotunes, which on a
# software device costs minutes per shape (the K = 2 step took 714 s at the default level).
#   OUT=bench/results/spirv_lavapipe.txt bash bench/spirv_lavapipe.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-/tmp/spirv_lavapipe.txt}
WORK=${WORK:-$(mktemp -d)}
ARMS=${ARMS:-implicit22 implicit25 explicit25}
reg=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -1)

patch_copy() { # crate file python-replacements... (kept when already made: a new copy's
  # mtimes would rebuild everything above it, ~13 min)
  local dir=$WORK/$1 stamp
  stamp=$(printf '%s\0' "$@" | sha256sum | cut -c1-16)
  [ "$(cat "$dir/.codetr-patch" 2>/dev/null)" = "$stamp" ] && return 0
  rm -rf "$dir" && cp -r "$reg/$1" "$dir" && rm -f "$dir/.cargo_vcs_info.json"
  python3 - "$dir/$2" "${@:3}" <<'PY'
import sys
p, pairs = sys.argv[1], sys.argv[2:]
s = open(p).read()
for old, new in zip(pairs[::2], pairs[1::2]):
    assert s.count(old) == 1, f"{p} changed: {old!r} not found once"
    s = s.replace(old, new)
open(p, "w").write(s)
PY
  echo "$stamp" > "$dir/.codetr-patch"
}
patch_copy cubecl-spirv-0.11.3 src/ops/memory.rs \
  "GlobalVariableOp::new(ctx, value_ty, StorageClass::Workgroup, name.clone(), None);" \
  "GlobalVariableOp::new(ctx, ty, StorageClass::Workgroup, name.clone(), None);" \
  "AddressOfOp::new(ctx, ty, name);" "AddressOfOp::new(ctx, value_ty, name);"
patch_copy cubecl-wgpu-0.11.3 src/backend/vulkan.rs \
  "    if let Some(long_vector) = &extended_feat.long_vector" \
  "    if std::env::var_os(\"CODETR_FORCE_EXPLICIT_SMEM\").is_some() {
        comp_options.vulkan.supports_explicit_smem = true;
    }

    if let Some(long_vector) = &extended_feat.long_vector"

cp Cargo.lock "$WORK/Cargo.lock"
trap 'cp "$WORK/Cargo.lock" "$ROOT/Cargo.lock"' EXIT
# Only the test targets with GPU tests: each release test binary is ~0.7 GB with debuginfo.
cargo_args=(--release -p codetr-core -p codetr-train --features codetr-train/vulkan
  --lib --test model_msda --test model_hf_parity --test train_codetr
  --config "patch.crates-io.cubecl-spirv.path=\"$WORK/cubecl-spirv-0.11.3\""
  --config "patch.crates-io.cubecl-wgpu.path=\"$WORK/cubecl-wgpu-0.11.3\"")
cargo nextest run --no-run "${cargo_args[@]}"

lvp25=
if [[ " $ARMS " == *25* ]]; then
  (cd "$WORK" && apt-get download mesa-vulkan-drivers/bookworm-backports > /dev/null 2>&1 \
    && dpkg -x mesa-vulkan-drivers_*.deb mesa25) \
    || echo "warning: no lavapipe 25 (add bookworm-backports to apt's sources)" >&2
  lib=$(ls "$WORK"/mesa25/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so 2>/dev/null || true)
  if [ -n "$lib" ]; then
    lvp25=$WORK/lvp25.json
    sed "s#\"libvulkan_lvp.so\"#\"$lib\"#" "$WORK"/mesa25/usr/share/vulkan/icd.d/lvp_icd.json > "$lvp25"
  fi
fi

export CODETR_VULKAN_IMPLICIT_SHARED=1 CODETR_WGPU_REQUIRED=1
export CUBECL_AUTOTUNE_LEVEL=${AUTOTUNE:-minimal}
[ -x .venv/bin/python ] && export CODETR_PYTHON=${CODETR_PYTHON:-$PWD/.venv/bin/python}
echo "# bench/spirv_lavapipe.sh, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD), autotune $CUBECL_AUTOTUNE_LEVEL" > "$OUT"
for arm in $ARMS; do
  env=()
  case $arm in
    implicit22) ;;
    implicit25) [ -n "$lvp25" ] || { echo "## $arm: skipped (no lavapipe 25)" >> "$OUT"; continue; }
      env=(VK_DRIVER_FILES="$lvp25") ;;
    explicit25) [ -n "$lvp25" ] || { echo "## $arm: skipped (no lavapipe 25)" >> "$OUT"; continue; }
      env=(VK_DRIVER_FILES="$lvp25" CODETR_FORCE_EXPLICIT_SMEM=1) ;;
    *) echo "unknown arm $arm" >&2; exit 2 ;;
  esac
  driver=$(env "${env[@]}" vulkaninfo 2>/dev/null | grep -m1 driverInfo | sed 's/.*= //' || true)
  echo "## $arm ($driver)" >> "$OUT"
  set +e
  env "${env[@]}" cargo nextest run --no-fail-fast "${cargo_args[@]}" \
    -E 'test(/wgpu_device|on_every_device|compare_exchange|read_the_device_fails|spirv_kernels/)' \
    > "$WORK/$arm.log" 2>&1
  rc=$?
  set -e
  grep -E '^\s+(PASS|FAIL|SIGSEGV|SIGABRT|TIMEOUT) ' "$WORK/$arm.log" | sort -u >> "$OUT"
  grep -E 'panicked|^\s+(case|bits vs)' "$WORK/$arm.log" | grep -v '^\s*$' | sort -u >> "$OUT" || true
  echo "exit: $rc" >> "$OUT"
done
cat "$OUT"
