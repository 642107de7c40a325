#!/usr/bin/env bash
# CPU cost of the two stages of the segmentation path left on the CPU, on this machine, no GPU:
# - decoding the upload: bench/make_image.py's 1280×960 PNG (8-bit RGB) and TIFF (16-bit), by the
#   sidecar (crates/sidecar/examples/decode_bench.rs) and by PIL as the original service did
#   (bench/decode_baseline.py);
# - writing an Open Inference Protocol answer (two 1024² logit maps as JSON), the sidecar's way
#   and through a serde_json::Value tree as before (crates/sidecar/examples/oip_response_bench.rs);
# - mask → polygons on synthetic 1280×960 masks: clean (trained-model-like), speckled, and
#   salt-and-pepper noise (what the random-weight models give); extra arguments go here.
# Prints one JSON line per file or mask.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup/env.sh
images=$(mktemp -d)
trap 'rm -rf "$images"' EXIT
python bench/make_image.py "$images/spheroids" --width 1280 --height 960 >/dev/null
cargo run -q --release -p gpupool-sidecar --example decode_bench -- "$images/spheroids.png" "$images/spheroids.tiff"
python bench/decode_baseline.py "$images/spheroids.png" "$images/spheroids.tiff"
for way in value joined; do
  cargo run -q --release -p gpupool-sidecar --example oip_response_bench -- --way "$way"
done
cargo run -q --release -p gpupool-sidecar --example postprocess_bench -- "$@"
