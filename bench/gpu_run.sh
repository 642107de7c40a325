#!/usr/bin/env bash
# One call on the lent H200 (see bench/README.md). Binaries are built here beforehand
# (`bench/build-device-bins.sh` puts them in .cache/device/) and carried; models are exported there.
#
#   bash bench/gpu_run.sh smoke      export fp16+fp32 models, sidecar smoke vs PyTorch (issue: sidecar)
#                                    + engine and HTTP throughput at 8 clients (4/2/2 split)
#   bash bench/gpu_run.sh baselines  Python baselines a, b, c, d on the same TorchScript files
#   bash bench/gpu_run.sh quick      smoke + HTTP throughput + baselines a, b and the usual best of c
#                                    (autocast / fp16 weights at batch 8-16), no torch.compile:
#                                    fits one call of the device tool
# Results go to $OUT (the device tool brings them back) as JSON plus the logs.
set -uo pipefail
PHASE=${1:?smoke|baselines}
WORK=/tmp/gpupool-gpu; MODELS=$WORK/models; mkdir -p "$MODELS"
# The device tool brings back at most 8 files: results are collected in one folder and packed on exit.
BRING_BACK=${OUT:-/tmp/gpupool-out}; mkdir -p "$BRING_BACK"
OUT=$WORK/results; rm -rf "$OUT"; mkdir -p "$OUT"
trap 'tar czf "$BRING_BACK/results.tgz" -C "$WORK" results; cp "$OUT"/*.log "$BRING_BACK"/ 2>/dev/null' EXIT
BIN=$PWD/.cache/device
PY=${PYTHON:-python3}
TORCH_LIB=$($PY -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1
MODELS_LIST="hrnet cbam_resunet unet_spherohq"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

export_models() { # precisions...
  for p in "$@"; do for m in $MODELS_LIST; do
    [[ -s "$MODELS/$m.$p.pt" ]] && continue
    $PY tests/models/export.py --model "$m" --size 1024 --precision "$p" --format torchscript \
      --device cuda --seed 0 --batch 2 ${EXPORT_FLAGS:-} --out "$MODELS/$m.$p.pt" | tee -a "$OUT/export.jsonl" || exit 1
  done; done
}

write_config() { # file precision budget_bytes max_batch slots
  local models=""
  for m in $MODELS_LIST; do
    models+="- name: $m
  source: {uri: $MODELS/$m.$2.pt, format: torchscript}
  input: {width: 1024, height: 1024, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
  precision: $2
  maxBatch: $4
  slots: $5
  maxQueueDelayMs: 4
  resident: true
"
  done
  cat > "$1" <<CFG
apiVersion: gpupool.io/v1alpha1
kind: SidecarConfig
pool: bench
generation: 1
memoryBudgetBytes: $3
streams: 6
admission: {rejectAbove: 0.97, memoryPressureWatermark: 0.9, maxQueuePerModel: 512}
models:
$models
CFG
}

smoke_and_http() {
  export_models fp16 fp32
  $PY bench/make_image.py "$WORK/spheroids" --width 1280 --height 960
  $PY bench/make_image.py "$WORK/square" --width 1024 --height 1024
  write_config "$WORK/fp16.yaml" fp16 $((120 << 30)) 8 2
  cp "$WORK/fp16.yaml" "$OUT/"
  "$BIN/gpupool-sidecar" --config "$WORK/fp16.yaml" --listen 127.0.0.1:8080 --device cuda \
    --calibration-iters 3 >"$OUT/sidecar.log" 2>&1 &
  SC=$!
  for _ in $(seq 300); do curl -sf 127.0.0.1:8080/readyz >/dev/null && break; sleep 1; done
  curl -s 127.0.0.1:8080/v1/telemetry >"$OUT/telemetry-start.json"
  for img in square spheroids; do
    $PY bench/gpu_smoke.py --url http://127.0.0.1:8080 --models-dir "$MODELS" --image "$WORK/$img.png" \
      --precision fp16 --out "$OUT/smoke-$img.json" || echo "smoke $img: below the IoU bar"
  done
  "$BIN/gpupool-loadgen" --target http://127.0.0.1:8080 --image "$WORK/spheroids.png" \
    --model hrnet --model hrnet --model hrnet --model hrnet --model cbam_resunet --model cbam_resunet \
    --model unet_spherohq --model unet_spherohq --clients 8 --seconds 15 >"$OUT/http-8-mixed.json"
  for m in $MODELS_LIST; do
    "$BIN/gpupool-loadgen" --target http://127.0.0.1:8080 --image "$WORK/spheroids.png" --model "$m" \
      --clients 8 --seconds 10 >"$OUT/http-8-$m.json"
  done
  curl -s 127.0.0.1:8080/v1/telemetry >"$OUT/telemetry-end.json"
  curl -s 127.0.0.1:8080/metrics >"$OUT/metrics.txt"
  kill -TERM $SC; wait $SC
}

case "$PHASE" in
smoke)
  smoke_and_http
  for m in $MODELS_LIST; do
    "$BIN/engine_bench" "$WORK/fp16.yaml" --device cuda --clients 8 --seconds 10 --model "$m" >"$OUT/engine-8-$m.json" 2>>"$OUT/engine.log"
  done
  ;;
quick)
  EXPORT_FLAGS=--no-verify smoke_and_http
  for m in $MODELS_LIST; do
    $PY bench/python_baselines.py --model "$m" --models-dir "$MODELS" --modes a,b,c \
      --c-variants fp16:8,fp16:16,autocast:8 --seconds 4 --out "$OUT/baselines-$m.json" || echo "baselines $m failed"
  done
  ;;
engine)
  # The engine alone (no HTTP, no image work): each model at 8 clients with a roomy budget, then the
  # seed's budget mode: 22 GiB, the three models resident, 8 clients split 4/2/2.
  EXPORT_FLAGS=--no-verify export_models fp16
  write_config "$WORK/roomy.yaml" fp16 $((120 << 30)) 8 2
  write_config "$WORK/budget22.yaml" fp16 $((22 << 30)) 8 1
  cp "$WORK/budget22.yaml" "$OUT/"
  for m in $MODELS_LIST; do
    "$BIN/engine_bench" "$WORK/roomy.yaml" --device cuda --clients 8 --seconds 8 --model "$m" >"$OUT/engine-8-$m.json" 2>>"$OUT/engine.log"
  done
  "$BIN/engine_bench" "$WORK/budget22.yaml" --device cuda --clients 8 --seconds 10 \
    --model hrnet --model hrnet --model hrnet --model hrnet --model cbam_resunet --model cbam_resunet \
    --model unet_spherohq --model unet_spherohq >"$OUT/engine-budget22-mixed.json" 2>>"$OUT/engine.log"
  ;;
baselines)
  export_models fp16 fp32 bf16
  for m in $MODELS_LIST; do
    $PY bench/python_baselines.py --model "$m" --models-dir "$MODELS" --modes "${MODES:-a,b,c,d}" \
      --seconds "${SECONDS_PER:-4}" --out "$OUT/baselines-$m.json" || echo "baselines $m failed"
  done
  ;;
esac
ls -la "$OUT"
