#!/usr/bin/env bash
# One call on the lent H200 (see bench/README.md). Binaries are built here beforehand
# (`bench/build-device-bins.sh` puts them in .cache/device/) and carried; models are exported there.
#
#   bash bench/gpu_run.sh compiled   export TorchScript and AOTInductor (fp16, dynamic batch 1-16)
#                                    files; the engine alone per model: scaling curve over 1-32
#                                    clients on the AOTInductor package, 8 clients with 2 slots, 8
#                                    clients on TorchScript; Python baseline (c) in the same call;
#                                    the 22 GiB budget mode (3 models resident, clients 4/2/2)
#   bash bench/gpu_run.sh final      everything that fits one call: the sidecar smoke against PyTorch
#                                    (TorchScript, while the AOTInductor packages compile); then, on
#                                    the packages with a 22 GiB budget and the three models
#                                    resident, the engine alone per model over 1-32 clients and the
#                                    4/2/2 mix, HTTP end to end per model and mixed; baseline (c)
#   bash bench/gpu_run.sh prepare    final's first half: exports, and the smoke while packages compile
#   bash bench/gpu_run.sh measure    final's second half, on the exports `prepare` left in
#                                    /tmp/gpupool-gpu (chain the two calls: the machine keeps /tmp
#                                    only while it stays held), or on its own (it exports what is
#                                    missing); SLOTS and MAX_BATCH (1 and 8) shape each model's
#                                    slots, CLIENTS and C_VARIANTS narrow it, STREAMS sets the
#                                    config's stream count (default 6; 1 makes models take turns),
#                                    MODES=a,c,d runs those baselines (BASELINES_S: their time)
#   bash bench/gpu_run.sh variants   attempts beyond `measure`, on its exports (chain after it, with
#                                    AOTI_STATIC="4 8"): two slots of batch 4 per model, the 4/2/2
#                                    engine mix on one stream, the CPU stages alone on this host,
#                                    HTTP with OMP_NUM_THREADS=1 for the sidecar
#   bash bench/gpu_run.sh smoke      the sidecar smoke against PyTorch alone (about 3 minutes)
#   bash bench/gpu_run.sh batching   batch formation at 4 and 8 clients, TorchScript HRNet, this
#                                    build against engine_bench.before (about 3 minutes)
#   bash bench/gpu_run.sh baselines  Python baselines a, b, c, d on the same TorchScript files
#                                    (MODES=a,b,d picks modes; D_BATCHES=8 compiles (d) for batch 8
#                                    only; C_VARIANTS narrows (c): all eight take about 90 s)
# Results go to $OUT (the device tool brings them back) as results.tgz, re-packed after every step
# so a call cut short by its time limit still returns what it measured. Files already exported in
# /tmp/gpupool-gpu (an earlier call on the same machine) are reused.
set -uo pipefail
PHASE=${1:?smoke|prepare|measure|variants|final|compiled|batching|baselines}
LIMIT_S=${LIMIT_S:-570}
WORK=/tmp/gpupool-gpu; MODELS=$WORK/models; mkdir -p "$MODELS"
# The device tool brings back at most 8 files: results are collected in one folder and packed.
BRING_BACK=${OUT:-/tmp/gpupool-out}; mkdir -p "$BRING_BACK"
OUT=$WORK/results-$PHASE; rm -rf "$OUT"; mkdir -p "$OUT"
checkpoint() { tar czf "$BRING_BACK/results.tgz" -C "$WORK" "results-$PHASE"; }
trap checkpoint EXIT
# Skips a step that would not finish inside the device call's time limit.
have_time() { # seconds the step needs
  if ((SECONDS + $1 > LIMIT_S)); then echo "skipped (time): ${*:2}" | tee -a "$OUT/skipped.txt"; return 1; fi
}
BIN=$PWD/.cache/device
PY=${PYTHON:-python3}
TORCH_LIB=$($PY -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1
MODELS_LIST="hrnet cbam_resunet unet_spherohq"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

export_ts() { # precisions...
  for p in "$@"; do for m in $MODELS_LIST; do
    [[ -s "$MODELS/$m.$p.pt" ]] && continue
    $PY tests/models/export.py --model "$m" --size 1024 --precision "$p" --format torchscript \
      --device cuda --seed 0 --batch 2 --no-verify --out "$MODELS/$m.$p.pt" >>"$OUT/export.jsonl" || exit 1
  done; done
}

# AOTInductor packages, fp16, dynamic batch 1..16, for the models in AOTI_MODELS (default all
# three); with AOTI_STATIC="8 ..." also packages compiled for exactly those batch sizes, gathered
# with the dynamic one in <model>.fp16.aoti/ (a directory the engine serves: each batch on the
# package that needs the least padding). All compile in parallel (CPU work; nothing is timed
# meanwhile). The reload check is skipped: export.py's own reload segfaults on the H200 although
# the packages load and run (docs/benchmarks.md).
export_aoti() {
  local pids=() m b
  aoti() { # model out extra-flags...
    local model=$1 out=$2
    shift 2
    [[ -s $out ]] && return 0
    $PY tests/models/export.py --model "$model" --size 1024 --precision fp16 --format aotinductor \
      --device cuda --seed 0 --batch 2 --no-verify --out "$out" "$@" \
      >"$OUT/export-aoti-$(basename "$out").json" 2>"$OUT/export-aoti-$(basename "$out").log"
  }
  for m in ${AOTI_MODELS:-$MODELS_LIST}; do
    aoti "$m" "$MODELS/$m.fp16.pt2" --max-batch 16 &
    pids+=($!)
    for b in ${AOTI_STATIC:-}; do
      aoti "$m" "$MODELS/$m.fp16.static-$b.pt2" --max-batch "$b" --static &
      pids+=($!)
    done
  done
  for p in "${pids[@]}"; do wait "$p" || echo "an AOTInductor export failed" | tee -a "$OUT/skipped.txt"; done
  for m in ${AOTI_MODELS:-$MODELS_LIST}; do
    [[ -n ${AOTI_STATIC:-} ]] || continue
    mkdir -p "$MODELS/$m.fp16.aoti"
    for f in "$MODELS/$m".fp16.pt2 "$MODELS/$m".fp16.static-*.pt2; do
      [[ -s $f ]] && ln -f "$f" "$MODELS/$m.fp16.aoti/$(basename "$f")"
    done
  done
}

write_config() { # file format(pt|pt2|auto) budget_bytes max_batch slots delay_ms models...
  # auto: the directory of AOTInductor packages, else the package, else the TorchScript file
  local file=$1 want=$2 budget=$3 batch=$4 slots=$5 delay=$6 models="" format ext
  shift 6
  for m in "$@"; do
    ext=$want
    if [[ $want == auto ]]; then
      ext=pt
      [[ -s $MODELS/$m.fp16.pt2 ]] && ext=pt2
      [[ -d $MODELS/$m.fp16.aoti ]] && ext=aoti
    fi
    format=torchscript
    [[ $ext == pt2 || $ext == aoti ]] && format=aotinductor
    models+="- name: $m
  source: {uri: $MODELS/$m.fp16.$ext, format: $format}
  input: {width: 1024, height: 1024, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
  precision: fp16
  maxBatch: $batch
  slots: $slots
  maxQueueDelayMs: $delay
  resident: true
"
  done
  cat >"$file" <<CFG
apiVersion: gpupool.io/v1alpha1
kind: SidecarConfig
pool: bench
generation: 1
memoryBudgetBytes: $budget
streams: ${STREAMS:-6}
admission: {rejectAbove: 0.97, memoryPressureWatermark: 0.9, maxQueuePerModel: 512}
models:
$models
CFG
}

ROOMY=$((120 << 30))

engine() { # name config clients seconds models... (extra engine_bench flags in ENGINE_FLAGS)
  local name=$1 config=$2 clients=$3 seconds=$4
  shift 4
  local args=()
  for m in "$@"; do args+=(--model "$m"); done
  # shellcheck disable=SC2086
  "$BIN/engine_bench" "$config" --device cuda --clients "$clients" --seconds "$seconds" "${args[@]}" \
    ${ENGINE_FLAGS:-} >"$OUT/engine-$name.json" 2>>"$OUT/engine.log"
  checkpoint
}

SIDECAR_PID=
sidecar() { # config [binary]: starts the sidecar on :8080 and waits until it is ready
  "$BIN/${2:-gpupool-sidecar}" --config "$1" --listen 127.0.0.1:8080 --device cuda \
    --calibration-iters 3 >>"$OUT/sidecar.log" 2>&1 &
  SIDECAR_PID=$!
  for _ in $(seq 400); do
    curl -sf 127.0.0.1:8080/readyz >/dev/null && return 0
    ((SECONDS > LIMIT_S)) && break
    sleep 1
  done
  echo "sidecar not ready" | tee -a "$OUT/skipped.txt"
}
stop_sidecar() { kill -TERM "$SIDECAR_PID"; wait "$SIDECAR_PID"; checkpoint; }

smoke() { # one sidecar on the TorchScript files, both test images
  write_config "$WORK/smoke.yaml" pt $ROOMY 4 1 4 $MODELS_LIST
  cp "$WORK/smoke.yaml" "$OUT/"
  sidecar "$WORK/smoke.yaml"
  for img in square spheroids; do
    $PY bench/gpu_smoke.py --url http://127.0.0.1:8080 --models-dir "$MODELS" --image "$WORK/$img.png" \
      --precision fp16 --out "$OUT/smoke-$img.json" >>"$OUT/smoke.log" 2>&1 || echo "smoke $img: below the bar" | tee -a "$OUT/skipped.txt"
  done
  stop_sidecar
}

images() {
  $PY bench/make_image.py "$WORK/spheroids" --width 1280 --height 960
  $PY bench/make_image.py "$WORK/square" --width 1024 --height 1024
}

MIX=(hrnet hrnet hrnet hrnet cbam_resunet cbam_resunet unet_spherohq unet_spherohq)

http_runs() { # per model at 8 clients, then the 4/2/2 mix, against the running sidecar
  curl -s 127.0.0.1:8080/v1/telemetry >"$OUT/telemetry-start.json"
  for m in $MODELS_LIST; do
    have_time 20 "http $m" && "$BIN/gpupool-loadgen" --target http://127.0.0.1:8080 --image "$WORK/spheroids.png" \
      --model "$m" --clients 8 --seconds 8 >"$OUT/http-8-$m.json"
    checkpoint
  done
  local args=()
  for m in "${MIX[@]}"; do args+=(--model "$m"); done
  have_time 20 "http mixed" && "$BIN/gpupool-loadgen" --target http://127.0.0.1:8080 --image "$WORK/spheroids.png" \
    "${args[@]}" --clients 8 --seconds 8 >"$OUT/http-8-mixed.json"
  curl -s 127.0.0.1:8080/v1/telemetry >"$OUT/telemetry-end.json"
  curl -s 127.0.0.1:8080/metrics >"$OUT/metrics.txt"
}

baselines() { # modes c-variants seconds
  for m in $MODELS_LIST; do
    $PY bench/python_baselines.py --model "$m" --models-dir "$MODELS" --modes "$1" \
      --c-variants "$2" --d-batches "${D_BATCHES:-8,16}" --seconds "$3" --out "$OUT/baselines-$1-$m.json" >>"$OUT/baselines.log" 2>&1 \
      || echo "baselines $1 $m failed" | tee -a "$OUT/skipped.txt"
    checkpoint
  done
}

compiled() {
  export_ts fp16 fp32
  export_aoti
  checkpoint
  for m in $MODELS_LIST; do
    write_config "$WORK/aoti1-$m.yaml" pt2 $ROOMY 16 1 8 "$m"
    write_config "$WORK/aoti2-$m.yaml" pt2 $ROOMY 8 2 8 "$m"
    write_config "$WORK/ts1-$m.yaml" pt $ROOMY 8 1 8 "$m"
  done
  cp "$WORK/aoti1-hrnet.yaml" "$OUT/"
  for m in $MODELS_LIST; do
    have_time 70 "aoti scaling $m" && engine "aoti1-$m" "$WORK/aoti1-$m.yaml" 1,2,4,8,16,32 5 "$m"
  done
  have_time 100 "baselines c" && baselines c fp16:8,fp16:16,autocast:8 3
  for m in $MODELS_LIST; do
    have_time 30 "aoti 2 slots $m" && engine "aoti2-$m" "$WORK/aoti2-$m.yaml" 8 6 "$m"
    have_time 30 "torchscript 1 slot $m" && engine "ts1-$m" "$WORK/ts1-$m.yaml" 8 6 "$m"
  done
  write_config "$WORK/budget22.yaml" pt2 $((22 << 30)) 8 1 8 $MODELS_LIST
  cp "$WORK/budget22.yaml" "$OUT/"
  have_time 45 "budget 22 GiB" && engine budget22-mixed "$WORK/budget22.yaml" 8 10 \
    hrnet hrnet hrnet hrnet cbam_resunet cbam_resunet unet_spherohq unet_spherohq
}

# Exports (TorchScript now, the AOTInductor packages in the background: CPU work) and the smoke
# against PyTorch meanwhile; nothing is timed until the packages are done.
prepare() {
  export_ts fp16 fp32
  images
  checkpoint
  export_aoti &
  local compiling=$!
  smoke
  wait $compiling
  checkpoint
}

# On the packages (exported first if missing, the TorchScript files meanwhile), with a 22 GiB
# budget and the three models resident: the engine alone per model over CLIENTS and the 4/2/2 mix,
# HTTP end to end per model and mixed, then the baselines (MODES, default c; C_VARIANTS). SLOTS
# per model: 1 by default, since two batches of 8 of UNet (10.4 GiB each at its peak) or
# CBAM-ResUNet (9.2 GiB) do not fit 22 GiB beside the weights, so a second slot only shrinks both
# batches; SLOTS=2 MAX_BATCH=4 (with packages for batch 4, AOTI_STATIC="4 8") takes the memory of
# one batch of 8, and at 8 clients its two half batches overlap (the variants phase measured it).
measure() {
  export_aoti &
  local compiling=$!
  export_ts fp16 fp32 # baseline (c)'s autocast variant runs the fp32 file
  wait $compiling
  [[ -s $WORK/spheroids.png ]] || images
  write_config "$WORK/budget22.yaml" auto $((22 << 30)) "${MAX_BATCH:-8}" "${SLOTS:-1}" 8 $MODELS_LIST
  cp "$WORK/budget22.yaml" "$OUT/"
  have_time 150 "engine" && ENGINE_FLAGS="--each-model --mixed-clients 8" \
    engine budget22 "$WORK/budget22.yaml" "${CLIENTS:-1,2,4,8,16,32}" 3 "${MIX[@]}"
  have_time 100 "http" && { sidecar "$WORK/budget22.yaml"; http_runs; stop_sidecar; }
  have_time "${BASELINES_S:-60}" "baselines ${MODES:-c}" && baselines "${MODES:-c}" "${C_VARIANTS:-fp16:8,autocast:8}" 3
}

# Attempts beyond `measure` (docs/benchmarks.md, "Next attempts"), each against the figure
# `measure` gives for the same clients:
# - two slots of batch 4 per model, on packages compiled for batch 4 (AOTI_STATIC="4 8"): with 8
#   clients two half batches alternate, so one computes while the other's copies, pre- and
#   post-processing and its clients' turnaround run, where one slot of 8 leaves the GPU idle then;
#   the same memory as one batch of 8, so the 22 GiB budget holds;
# - the 4/2/2 engine mix with one stream for the pool (models take turns at full speed);
# - the CPU stages alone on this host, idle (decode, mask → polygons): its per-core speed against
#   the build machine's, to tell a slower core from contention under load;
# - HTTP per model with the sidecar's OpenMP pool at one thread (libtorch's CPU pool, idle here,
#   can spin beside the decoding and tracing).
variants() {
  export_aoti &
  local compiling=$!
  export_ts fp16
  wait $compiling
  [[ -s $WORK/spheroids.png ]] || images
  { nproc; lscpu; } >"$OUT/cpu.txt" 2>&1
  write_config "$WORK/slots2-batch4.yaml" auto $((22 << 30)) 4 2 8 $MODELS_LIST
  cp "$WORK/slots2-batch4.yaml" "$OUT/"
  have_time 120 "slots 2 batch 4" && ENGINE_FLAGS="--each-model" \
    engine slots2-batch4 "$WORK/slots2-batch4.yaml" 4,8,16 3 $MODELS_LIST
  STREAMS=1 write_config "$WORK/streams1.yaml" auto $((22 << 30)) 8 1 8 $MODELS_LIST
  cp "$WORK/streams1.yaml" "$OUT/"
  have_time 90 "streams 1 mix" && engine streams1-mixed "$WORK/streams1.yaml" 8 5 "${MIX[@]}"
  have_time 40 "cpu stages" && {
    "$BIN/decode_bench" "$WORK/spheroids.png" >"$OUT/cpu-decode.jsonl"
    "$BIN/postprocess_bench" --runs 11 >"$OUT/cpu-postprocess.jsonl"
    checkpoint
  }
  write_config "$WORK/budget22.yaml" auto $((22 << 30)) 8 1 8 $MODELS_LIST
  have_time 100 "http omp 1" && {
    OMP_NUM_THREADS=1 sidecar "$WORK/budget22.yaml"
    http_runs
    stop_sidecar
  }
}

# A short check of batch formation (no package to compile): TorchScript HRNet, one slot, 4 and 8
# clients, the engine alone and HTTP end to end, this build and, if present, an earlier one put
# in .cache/device by hand as engine_bench.before / gpupool-sidecar.before, in the same call.
batching() {
  local MODELS_LIST=hrnet b
  export_ts fp16
  images
  write_config "$WORK/ts-hrnet.yaml" pt $ROOMY 8 1 8 hrnet
  cp "$WORK/ts-hrnet.yaml" "$OUT/"
  for b in engine_bench.before engine_bench; do
    [[ -x $BIN/$b ]] || continue
    have_time 50 "$b" && "$BIN/$b" "$WORK/ts-hrnet.yaml" --device cuda --clients 4,8 --seconds 3 \
      --model hrnet >"$OUT/engine-ts-hrnet-$b.json" 2>>"$OUT/engine.log"
    checkpoint
  done
  for b in gpupool-sidecar.before gpupool-sidecar; do
    [[ -x $BIN/$b ]] || continue
    have_time 40 "http $b" || continue
    sidecar "$WORK/ts-hrnet.yaml" "$b"
    "$BIN/gpupool-loadgen" --target http://127.0.0.1:8080 --image "$WORK/spheroids.png" \
      --model hrnet --clients 8 --seconds 6 >"$OUT/http-ts-hrnet-$b.json"
    stop_sidecar
  done
}

case "$PHASE" in
smoke)
  export_ts fp16 fp32
  images
  smoke
  ;;
compiled) compiled ;;
prepare) prepare ;;
measure) measure ;;
variants) variants ;;
final) prepare; measure ;;
batching) batching ;;
baselines)
  export_ts fp16 fp32 bf16
  baselines "${MODES:-a,b,c,d}" "${C_VARIANTS:-fp16:8,fp16:16,bf16:8,bf16:16,autocast:8,autocast:16,fp32:8,fp32:16}" "${SECONDS_PER:-4}"
  ;;
*) echo "unknown phase $PHASE" >&2; exit 2 ;;
esac
ls -la "$OUT"
