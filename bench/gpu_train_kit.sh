#!/usr/bin/env bash
# The training-side device kit, .gputrain/ (ignored; carried with `carry: [".gputrain"]`):
# ../shared/gpu/make-kit.sh's kit is for serving (it carries ONNX Runtime's CUDA provider,
# 27 MB), training needs only the binaries, the Vulkan loader and the peer's wheels.
#   1. builds (unless SKIP_BUILD=1): codetr-train and the gpu_ops bench with `--features
#      $FEATURE` (default vulkan), and bench/burn021_ops with `--features cuda`;
#   2. writes .gputrain/bins.tar.xz (stripped), .gputrain/gl/ (libvulkan1 .deb),
#      .gputrain/env.sh, .gputrain/source.txt (the commit built), .gpupeer/ (wheels for
#      bench/train_step_torch.py, below) and .gpuval/ (the Khronos validation layer .deb).
# On the device: `source .gputrain/env.sh` (unpacks to /tmp/gputrain, sets PATH, the CUDA
# libraries of the machine's PyTorch on LD_LIBRARY_PATH for Burn 0.21's nvrtc, the Vulkan
# loader and the NVIDIA ICD, and installs the peer's wheels into the machine's python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FEATURE=${FEATURE:-vulkan}
kit=.gputrain
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p codetr-train --features "$FEATURE" --bin codetr-train
  cargo bench -p codetr-core --features "$FEATURE" --bench gpu_ops --no-run
  (cd bench/burn021_ops && cargo build --release --features cuda)
fi
gpu_ops=$(ls -t target/release/deps/gpu_ops-* | grep -v '\.d$' | head -1)
rm -rf "$kit"
mkdir -p "$kit/gl"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
strip -o "$tmp/codetr-train" target/release/codetr-train
strip -o "$tmp/gpu_ops" "$gpu_ops"
strip -o "$tmp/burn021-ops" bench/burn021_ops/target/release/burn021-ops
# -9e: 4 % smaller than -6 (autotune grew each Burn binary by 0.8 MB compressed), 64 MiB of
# memory to unpack.
tar -C "$tmp" -cf - . | xz -9e -T0 > "$kit/bins.tar.xz"
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64'
(cd "$kit/gl" && apt-get $o download libvulkan1 >/dev/null 2>&1) \
  || echo "warning: could not download libvulkan1 (the device may lack the Vulkan loader)" >&2
# What the binaries were built from: a kit is current while nothing under core/, trainer/,
# bench/burn021_ops/ or Cargo.lock has changed since (README, "GPU training").
{ git rev-parse HEAD; git status --porcelain -- core trainer bench/burn021_ops Cargo.lock | sed 's/^/dirty: /'; } \
  > "$kit/source.txt" 2>/dev/null || true
# The Khronos validation layer (4.5 MB), apart: carried only with bench/gpu_backend.sh, which
# runs the SPIR-V kernels under it once (docs/DESIGN.md §12).
val=.gpuval
rm -rf "$val"
mkdir -p "$val"
(cd "$val" && apt-get $o download vulkan-validationlayers >/dev/null 2>&1) \
  || echo "warning: could not download vulkan-validationlayers (gpu_backend.sh skips its SPIR-V check)" >&2
# The peer's wheels, apart (carried only with gpu_train.sh): transformers + pillow and their
# pure dependencies for the device's python (DEVICE_PYTHON, 3.12), without numpy and hf_xet
# (a PyTorch venv has numpy; hf_xet is for downloads). scipy (HF's Hungarian matcher) is 35 MB:
# only with PEER_SCIPY=1, for a device python that lacks it (gpu_train.sh logs what is missing).
peer=.gpupeer
rm -rf "$peer"
mkdir -p "$peer"
extra=(); [ "${PEER_SCIPY:-0}" = 1 ] && extra=(scipy)
python3 -m pip download -q --only-binary=:all: --python-version "${DEVICE_PYTHON:-3.12}" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$peer" transformers==4.57.1 pillow==13.0.0 "${extra[@]}" \
  || echo "warning: no peer wheels" >&2
rm -f "$peer"/hf_xet-*.whl
[ "${PEER_SCIPY:-0}" = 1 ] || rm -f "$peer"/numpy-*.whl
cat > "$kit/env.sh" <<'ENV'
_k=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p /tmp/gputrain/bin /tmp/gputrain/py
tar -C /tmp/gputrain/bin -xJf "$_k/bins.tar.xz"
if ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in "$_k"/gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
  ldconfig
fi
for f in "$_k"/../.gpuval/*.deb; do [ -f "$f" ] && dpkg -x "$f" / && ldconfig; done
[ -f "$_k/source.txt" ] && echo "kit built from $(head -1 "$_k/source.txt")$(grep -q dirty "$_k/source.txt" && echo ' (with uncommitted changes)')"
_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$_icd" ] && export VK_DRIVER_FILES=$_icd
_sp=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$(find "$_sp/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}
_p=$_k/../.gpupeer
if [ -d "$_p" ] && ! python3 -c 'import transformers, PIL' 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-index "$_p"/*.whl 2>&1 | tail -2
fi
unset _p
export PATH=/tmp/gputrain/bin:$PATH
unset _k _icd _sp
ENV
echo "kit: $(du -sh "$kit" | cut -f1) in $kit, peer wheels $(du -sh "$peer" | cut -f1) in $peer, validation layer $(du -sh "$val" | cut -f1) in $val (tree + carry under 64 MiB, see ../shared/gpu/slim.sh)"
# What is left of one call's 64 MiB for the (slimmed) tracked tree, per call.
for call in "gpu_backend.sh:$kit $val" "gpu_train.sh:$kit $peer"; do
  # shellcheck disable=SC2086
  left=$(( (64 << 20) - $(du -sb ${call#*:} | awk '{s += $1} END {print s}') ))
  echo "${call%%:*} call (carry ${call#*:}): $((left >> 10)) KiB left for the tree (the slim tree was 3.8 MB)"
  [ "$left" -gt $((4 << 20)) ] || echo "warning: under 4 MiB left for the tree in the ${call%%:*} call" >&2
done
