#!/usr/bin/env bash
# CPU model benchmarks (MSDA implementations fwd/bwd, detector forward per image), written to
# bench/results/model_cpu[_FILTER].jsonl. Usage: bench/model.sh [msda|forward]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
suffix=${1:+_$1}
out="$ROOT/bench/results/model_cpu${suffix}.jsonl"
mkdir -p "$(dirname "$out")"
cargo bench -q -p codetr-core --bench model -- "$@" | tee "$out.tmp"
mv "$out.tmp" "$out"
