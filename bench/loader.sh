#!/usr/bin/env bash
# Batching loader throughput (decode + augment + resize on worker threads) on the default
# synthetic dataset, written to bench/results/loader.json. Model steps/s is compared against it
# once the trainer exists (the loader must outpace the model, so the trainer never waits).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --release -q -p codetr-train --bin codetr-train
BIN="$TARGET_DIR/release/codetr-train"
DATA="$ROOT/data/synth"
[ -f "$DATA/train/instances.json" ] || "$BIN" synth --out "$DATA" >/dev/null
out="$ROOT/bench/results/loader.json"
mkdir -p "$(dirname "$out")"
{
  echo "{\"machine\": \"$(uname -m), $(nproc) cores\", \"runs\": ["
  "$BIN" bench-loader --data "$DATA/train" --batch-size 8 --sizes 256 --workers 1 --batches 100; echo ","
  "$BIN" bench-loader --data "$DATA/train" --batch-size 8 --sizes 256 --workers 2 --batches 100; echo ","
  "$BIN" bench-loader --data "$DATA/train" --batch-size 8 --sizes 224,256,288 --workers 2 --batches 100; echo ","
  "$BIN" bench-loader --data "$DATA/train" --batch-size 8 --sizes 256 --workers 2 --batches 100 --no-augment
  echo "]}"
} > "$out.tmp" 2>/dev/null
mv "$out.tmp" "$out"
cat "$out"
