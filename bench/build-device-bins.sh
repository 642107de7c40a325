#!/usr/bin/env bash
# Builds the release binaries the GPU calls carry (.cache/device/, ignored by git) and checks that
# libtorch_cuda is linked (gpu-device.md: --as-needed would drop it and CUDA would be invisible).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup/env.sh
cargo build --release -p gpupool-sidecar --bin gpupool-sidecar
cargo build --release -p gpupool-tests --bin gpupool-loadgen
cargo build --release -p gpupool-executor --example engine_bench
# The CPU stages alone, to tell the GPU host's per-core speed from contention under load.
cargo build --release -p gpupool-sidecar --example decode_bench --example postprocess_bench
mkdir -p .cache/device
cp target/release/gpupool-sidecar target/release/gpupool-loadgen target/release/examples/engine_bench \
  target/release/examples/decode_bench target/release/examples/postprocess_bench .cache/device/
strip .cache/device/*  # debug info would not fit the 64 MiB a device call carries
for b in .cache/device/gpupool-sidecar .cache/device/engine_bench; do
  readelf -d "$b" | grep -q 'libtorch_cuda' || { echo "$b does not link libtorch_cuda" >&2; exit 1; }
done
du -sh .cache/device/*
