#!/usr/bin/env bash
# Creates (once) the Python virtual environment whose PyPI torch==2.11.0 provides libtorch for tch 0.24,
# plus the CUDA runtime headers the executor's C++ shim compiles against. Idempotent: a stamp file
# records the exact requirement set, so a second run returns in well under a second.
set -euo pipefail
CACHE="${GPUPOOL_CACHE:-$HOME/.cache/gpupool}"
VENV="$CACHE/venv"
REQS="torch==2.11.0 nvidia-cuda-crt==13.0.88 numpy pillow scipy helm-python-sdk==0.2.2"
STAMP="$VENV/.gpupool-stamp"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$REQS" ]]; then
  exit 0
fi
mkdir -p "$CACHE"
PY="${PYTHON:-python3}"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --no-cache-dir --upgrade pip
# shellcheck disable=SC2086
# --no-cache-dir: the venv is the cache; a second copy of the CUDA wheels would cost GBs of disk.
"$VENV/bin/python" -m pip install -q --no-cache-dir $REQS
echo "$REQS" > "$STAMP"
echo "torch venv ready at $VENV"
