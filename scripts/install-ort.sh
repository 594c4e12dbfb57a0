#!/usr/bin/env bash
# Installs the ONNX Runtime shared library from the PyPI wheel into the ignored folder .ort/
# (docs/DESIGN.md §9/§12: no downloads from GitHub; the `ort` crate loads it via ORT_DYLIB_PATH).
# Usage: scripts/install-ort.sh [cpu|gpu]   Prints the library path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:-cpu}
version=1.31.1
case "$flavour" in
  cpu) pkg=onnxruntime ;;
  gpu) pkg=onnxruntime-gpu ;;
  *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;;
esac
dir=.ort/$flavour
lib=$dir/onnxruntime/capi/libonnxruntime.so.$version
if [ ! -f "$lib" ]; then
  echo "installing $pkg==$version into $dir" >&2
  rm -rf "$dir.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir.tmp" "$pkg==$version"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
fi
ln -sf "onnxruntime/capi/libonnxruntime.so.$version" "$dir/libonnxruntime.so"
echo "$PWD/$dir/libonnxruntime.so"
