#!/usr/bin/env bash
# Converting an official Co-DINO checkpoint: wall time and peak RSS of `codetr-train import`
# (.pth → codetr checkpoint) and `codetr-export` (.pth → ONNX at 800², the official preset of
# the file's backbone), against the file's size. The issue's bounds: under a minute, peak RSS
# under 3× the file.
#
# ARCH: r50 (default) or swin-l. PTH: the official checkpoint (e.g.
# co_dino_5scale_r50_1x_coco.pth). Without it, a full-size checkpoint of ARCH with random
# weights is made by tests/reference/make_official_fixtures.py --full / --full-swin, which needs
# REF_PY (a Python with torch, mmengine, mmcv-lite, mmdet 3.3.0) and MMDET_SRC (a checkout of
# mmdetection v3.3.0). Writes bench/results/official_import.json (r50) or
# bench/results/official_import_swin_l.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ARCH="${ARCH:-r50}"
case "$ARCH" in
    r50) FULL=--full; RESULT=bench/results/official_import.json ;;
    swin-l) FULL=--full-swin; RESULT=bench/results/official_import_swin_l.json ;;
    *) echo "ARCH must be r50 or swin-l, got $ARCH" >&2; exit 2 ;;
esac
PTH="${PTH:-}"
if [ -z "$PTH" ]; then
    PTH="$WORK/co_dino_5scale_${ARCH}_random.pth"
    : "${REF_PY:?set PTH to an official checkpoint, or REF_PY and MMDET_SRC to make one}"
    : "${MMDET_SRC:?set MMDET_SRC to a checkout of mmdetection v3.3.0}"
    MMDET_SRC="$MMDET_SRC" "$REF_PY" tests/reference/make_official_fixtures.py "$FULL" "$PTH" \
        2>/dev/null
fi

echo "== building codetr-train and codetr-export (release)"
timeout 2400 cargo build --release -q -p codetr-train -p codetr-export

# Runs a command under GNU time; prints "seconds max_rss_kib".
measure() {
    local log="$WORK/time.log"
    RUST_LOG=warn /usr/bin/time -f "%e %M" -o "$log" "$@" > "$WORK/out.log" 2>&1 || {
        cat "$WORK/out.log"
        exit 1
    }
    cat "$log"
}

BYTES=$(stat -c %s "$PTH")
# Peak RSS of the same import varies between runs (two modes ~190 MB apart: the allocator
# and the order of frees), so it runs RUNS times and all of them are reported.
IMPORTS=()
for _ in $(seq "${RUNS:-5}"); do
    IMPORTS+=("$(measure "$TARGET_DIR/release/codetr-train" import \
        --checkpoint "$PTH" --out "$WORK/imported.ckpt")")
done
grep -E "tensors;|wrote" "$WORK/out.log"
read -r EXPORT_S EXPORT_KIB < <(measure "$TARGET_DIR/release/codetr-export" \
    --checkpoint "$PTH" --out "$WORK/imported.onnx")
grep -E "imported|nodes" "$WORK/out.log"

python3 - "$RESULT" "$ARCH" "$BYTES" "$EXPORT_S" "$EXPORT_KIB" "${IMPORTS[@]}" <<'PY'
import json, os, sys
out, arch, b, e_s, e_k, *imports = sys.argv[1:]
b = int(b)
runs = [(float(s), int(k) * 1024) for s, k in (r.split() for r in imports)]
res = {
    "arch": arch,
    "checkpoint_bytes": b,
    "import": {"runs": len(runs),
               "seconds_max": max(s for s, _ in runs),
               "peak_rss_bytes": [k for _, k in runs],
               "rss_over_file_min": round(min(k for _, k in runs) / b, 3),
               "rss_over_file_max": round(max(k for _, k in runs) / b, 3)},
    "export_800": {"seconds": float(e_s), "peak_rss_bytes": int(e_k) * 1024,
                   "rss_over_file": round(int(e_k) * 1024 / b, 3)},
    "machine": f"{os.cpu_count()} cores",
    "command": f"ARCH={arch} bash bench/official_import.sh",
}
with open(out, "w") as f:
    json.dump(res, f, indent=2)
    f.write("\n")
print(json.dumps(res, indent=2))
PY
