#!/usr/bin/env bash
# CPU cost of mask → polygons (the part of the segmentation path left on the CPU), on synthetic
# 1280×960 masks: clean (trained-model-like), speckled, and salt-and-pepper noise (what the
# random-weight models give). Runs anywhere; no GPU. Prints one JSON line per mask.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup/env.sh
cargo run -q --release -p gpupool-sidecar --example postprocess_bench -- "$@"
