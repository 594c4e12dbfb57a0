#!/usr/bin/env bash
# Creates the ignored venv .venv with the Python reference tools (pycocotools, onnx,
# onnxruntime, Pillow) pinned in tests/python/requirements.txt. Idempotent: a stamp file
# records which requirements were installed.
set -euo pipefail
cd "$(dirname "$0")/.."
req=tests/python/requirements.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
PY=${PYTHON:-python3}
echo "setting up .venv with $req" >&2
"$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
