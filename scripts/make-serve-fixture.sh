#!/usr/bin/env bash
# Regenerates server/tests/fixtures/micro.{ckpt,onnx}: a randomly initialised, very small
# Co-DINO (ResNet-18 at 1/8 width, d_model 32, 64×64 input, the synthetic dataset's 10 classes)
# exported with the real exporter. The server's tests serve it; it is small enough to commit
# (the server crate must not build Burn to get a graph). Exports are deterministic: the same
# checkpoint gives the same graph bytes. Also writes micro-dynamic.onnx (--dynamic-size),
# micro-letterbox.onnx and micro-letterbox-dynamic.onnx (both --resize letterbox).
# Usage: scripts/make-serve-fixture.sh [target profile dir, default target/debug]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug}
out=server/tests/fixtures
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/micro.toml" <<'TOML'
preset = "tiny"
input_size = 64
max_detections = 20
[backbone]
base_width = 8
[neck]
gn_groups = 8
[transformer]
d_model = 32
num_heads = 2
num_points = 2
encoder_layers = 1
decoder_layers = 2
ffn_dim = 64
num_queries = 30
TOML
# The synthetic dataset's classes (codetr-train synth), as a COCO file with no images.
names=(disc rectangle triangle star ring cross hexagon arrow heart crescent)
{
  printf '{"images": [], "annotations": [], "categories": ['
  for i in "${!names[@]}"; do
    [ "$i" -gt 0 ] && printf ', '
    printf '{"id": %d, "name": "%s"}' $((i + 1)) "${names[$i]}"
  done
  printf ']}\n'
} > "$tmp/classes.json"
# The checkpoint is made once (FORCE=1 remakes it): its bytes differ between inits (Burn's
# parameter ids are random), and the graphs carry its sha256.
if [ ! -f "$out/micro.ckpt" ] || [ -n "${FORCE:-}" ]; then
  "$bin/codetr-train" init --config "$tmp/micro.toml" --classes-from "$tmp/classes.json" \
    --seed 7 --out "$out/micro.ckpt"
fi
"$bin/codetr-export" --checkpoint "$out/micro.ckpt" --out "$out/micro.onnx"
# The same model exported with symbolic H×W (served with --input-size).
"$bin/codetr-export" --checkpoint "$out/micro.ckpt" --out "$out/micro-dynamic.onnx" --dynamic-size
# And letterboxed: the server keeps the aspect ratio, pads, and feeds `valid_sizes`.
"$bin/codetr-export" --checkpoint "$out/micro.ckpt" --out "$out/micro-letterbox.onnx" --resize letterbox
# Letterboxed with symbolic H×W: served at several sizes (landscape and portrait canvases).
"$bin/codetr-export" --checkpoint "$out/micro.ckpt" --out "$out/micro-letterbox-dynamic.onnx" \
  --resize letterbox --dynamic-size
ls -l "$out"
