#!/usr/bin/env bash
# Issue 23: what the server's padding costs against the official test pipeline. The official
# (non-LSJ) Co-DINO test runs one image at a time at its own keep-ratio size, unpadded; the
# server letterboxes into a fixed canvas per orientation so that it can batch, and masks the
# padding, but the backbone's features at the image's right and bottom edge see the padding.
#
# For a checkpoint, per split: COCO AP of `validate --unpadded` (official), of
# `validate --input-size L,P` (the server's canvases: the limits themselves, and the same
# rounded up to a multiple of the coarsest stride) and of the model's square canvas (more
# padding), all at the same keep-ratio scale (the limits), so that only the padding differs.
# Default: the shipped model on synthetic held-out test splits of four aspect ratios, with the
# official ratio of limits to canvases scaled to its 256 input (800/1333 ≈ 154/256).
#
# Usage: bench/padding_effect.sh [OUT_MD]
# Env: CKPT (models/codino-tiny-synth/model.ckpt), SPLITS (space-separated split dirs; default:
#      generated), N (images per generated split, 150), LIMITS (154,256), CANVASES
#      (154x256,256x154), ALIGNED (192x256,256x192: CANVASES rounded up to the coarsest
#      stride, 64), BIN_DIR (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/padding_effect.md}
ckpt=${CKPT:-models/codino-tiny-synth/model.ckpt}
bin=${BIN_DIR:-target/release}
limits=${LIMITS:-154,256}
canvases=${CANVASES:-154x256,256x154}
aligned=${ALIGNED:-192x256,256x192}
n=${N:-150}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -z "${SPLITS:-}" ]; then
  SPLITS=""
  for size in 320x240 240x320 320x180 256x256; do
    "$bin/codetr-train" synth --out "$tmp/$size" --train 1 --val 1 --test "$n" --seed 0 \
      --size "$size" --no-stats-file > /dev/null
    SPLITS="$SPLITS $tmp/$size/test"
  done
fi
ap() { # split, mode flags... → "AP AP50 seconds"
  local split=$1; shift
  local t0=$(date +%s.%N)
  "$bin/codetr-train" validate --checkpoint "$ckpt" --data "$split" --resize letterbox \
    --letterbox-limits "$limits" --json "$@" > "$tmp/m.json"
  local t1=$(date +%s.%N)
  python3 -c "import json,sys; m=json.load(open('$tmp/m.json')); print(f\"{m['AP']:.4f} {m['AP50']:.4f} {$t1-$t0:.0f}\")"
}
{
  echo "| split (W×H) | images | official: unpadded AP / AP50 | canvases $canvases AP / AP50 | Δ AP | canvases $aligned AP / AP50 | Δ AP | square canvas AP / AP50 | Δ AP |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for split in $SPLITS; do
    imgs=$(python3 -c "import json; print(len(json.load(open('$split/instances.json'))['images']))")
    wh=$(python3 -c "import json; i=json.load(open('$split/instances.json'))['images'][0]; print(f\"{i['width']}×{i['height']}\")")
    read -r ua ua50 ut < <(ap "$split" --unpadded)
    read -r ca ca50 ct < <(ap "$split" --input-size "$canvases")
    read -r aa aa50 at < <(ap "$split" --input-size "$aligned")
    read -r sa sa50 st < <(ap "$split")
    python3 -c "print(f'| $wh | $imgs | $ua / $ua50 | $ca / $ca50 | {$ca-$ua:+.4f} | $aa / $aa50 | {$aa-$ua:+.4f} | $sa / $sa50 | {$sa-$ua:+.4f} |')"
    echo "  $wh: unpadded ${ut}s, canvases ${ct}s, aligned ${at}s, square ${st}s" >&2
  done
} > "$tmp/table.md"
mkdir -p "$(dirname "$out")"
{
  echo "# The server's padding vs the official unpadded test (issue 23)"
  echo
  echo "Checkpoint \`$ckpt\`, limits $limits. Command: \`BIN_DIR=$bin bench/padding_effect.sh $out\`."
  echo
  cat "$tmp/table.md"
} > "$out.tmp" && mv "$out.tmp" "$out"
cat "$out"
