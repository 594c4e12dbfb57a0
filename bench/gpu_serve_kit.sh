#!/usr/bin/env bash
# Issue 21's device kit, .gpukit/ (ignored; carried with `carry: [".gpukit"]`): everything
# bench/gpu_serve.sh and bench/gpu_profile.sh run on the GPU machine.
#   1. builds (unless SKIP_BUILD=1), release: codetr-serve with `--features gpu` (ONNX
#      Runtime's CUDA/TensorRT providers; loads the library at run time, so it builds here),
#      codetr-train, codetr-export, codetr-loadtest, and the server's raw_ort and drift benches
#      (copied to target/release/ under those names);
#   2. ../shared/gpu/make-kit.sh with them (ONNX Runtime + its CUDA provider pruned to sm_90);
#   3. the shipped checkpoint in .gpukit/extra/ (gpu_serve.sh exports the shipped graphs from
#      it on the device: the graph files do not travel beside the kit, the checkpoint does);
#   4. .gpukit/source.txt (the commit built, a `dirty:` line per uncommitted change) and the
#      room left in one call beside the slim tree (64 MiB in all).
# Then: ../shared/gpu/slim.sh on; the call (README, "Performance on a GPU"); slim.sh off.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
rel=${CARGO_TARGET_DIR:-target}/release
bench_exe() { # bench name → its executable, from cargo's own report of the build
  cargo bench -p codetr-serve --features gpu --bench "$1" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
exe=[m["executable"] for m in map(json.loads,sys.stdin) if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]==sys.argv[1]]
print(exe[-1] if exe else "")' "$1"
}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p codetr-serve --features gpu
  cargo build --release -p codetr-train -p codetr-export -p codetr-loadtest
  for b in raw_ort drift; do
    cargo bench -p codetr-serve --features gpu --bench "$b" --no-run
    exe=$(bench_exe "$b")
    [ -n "$exe" ] || { echo "no executable for the $b bench" >&2; exit 1; }
    cp "$exe" "$rel/$b"
  done
fi
../shared/gpu/make-kit.sh codetr-serve codetr-train codetr-export codetr-loadtest raw_ort drift
mkdir -p .gpukit/extra
cp models/codino-tiny-synth/model.ckpt .gpukit/extra/model.ckpt
{ git rev-parse HEAD; git status --porcelain -- server models/format exporter core trainer Cargo.lock | sed 's/^/dirty: /'; } \
  > .gpukit/source.txt 2>/dev/null || true
kit=$(du -sb .gpukit | cut -f1)
# The slim tree: tracked files under slim.sh's 1 MB threshold.
tree=$(git ls-files -z | xargs -0 du -b | awk -v lim="${SLIM_MIN_BYTES:-1000000}" '$1 < lim {s += $1} END {print s + 0}')
room=$(( 64 * 1024 * 1024 - kit - tree ))
echo "kit $(( kit / 1024 )) KiB + slim tree $(( tree / 1024 )) KiB: $(( room / 1024 )) KiB left in one call"
[ "$room" -gt 0 ] || { echo "warning: the kit and the slim tree exceed one call's 64 MiB" >&2; exit 1; }
