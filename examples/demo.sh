#!/usr/bin/env bash
# The whole gpupool loop on one machine, for real: a Kubernetes control plane (etcd, API server,
# controller-manager, scheduler), GPU nodes played by the kubelet stand-in, the operator, a pool of
# three segmentation models served by real sidecar processes (libtorch; the CPU here, the GPU on a
# GPU node), closed-loop traffic, and replicas scaled from the pods' queue telemetry — until the
# cluster runs out of GPUs and a pod stays Pending, which a cluster autoscaler answers by adding a
# node (played here by starting one more stand-in).
#
#   make demo                      (runs set-up first; ~2 minutes once built)
#   GPUPOOL_DEMO_KEEP=1 make demo  (leave everything running at the end; prints how to stop it)
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup/env.sh

DEMO="${GPUPOOL_DEMO_DIR:-$PWD/target/demo}"
NS=spheroids
PIDS=()
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  if [[ "${GPUPOOL_DEMO_KEEP:-0}" == 1 ]]; then
    echo "left running; stop with: kill ${PIDS[*]}; bash tests/controlplane/control-plane.sh down $DEMO/cp"
    return
  fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bash tests/controlplane/control-plane.sh down "$DEMO/cp" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "building the operator, sidecar, kubelet stand-in and load generator (release)"
cargo build -q --release -p gpupool-operator -p gpupool-sidecar -p gpupool-tests \
  --bin gpupool-operator --bin gpupool-sidecar --bin gpupool-kubelet --bin gpupool-loadgen
BIN="$PWD/target/release"

step "exporting the three models (real architectures, reduced width for the CPU) as TorchScript"
MODELS="$DEMO/models"; mkdir -p "$MODELS"
for m in hrnet cbam_resunet unet_spherohq; do
  [[ -s "$MODELS/$m.pt" ]] || python tests/models/export.py --model "$m" --size 256 --width 8 \
    --precision fp32 --format torchscript --device cpu --seed 0 --out "$MODELS/$m.pt" >/dev/null
done
ls -la "$MODELS"
[[ -s "$DEMO/spheroids.png" ]] || python bench/make_image.py "$DEMO/spheroids" --width 640 --height 480

step "starting a local control plane (Kubernetes $(basename "$(bash tests/controlplane/control-plane.sh bin-dir | xargs dirname)"))"
export KUBECONFIG
KUBECONFIG=$(bash tests/controlplane/control-plane.sh up "$DEMO/cp" | tail -1)
kubectl version 2>/dev/null | grep Server
kubectl apply -f crds/
kubectl wait --for=condition=Established crd/inferencepools.gpupool.io --timeout=30s >/dev/null
kubectl create namespace "$NS" >/dev/null

start_node() { # name pod-cidr
  "$BIN/gpupool-kubelet" --kubeconfig "$KUBECONFIG" --node-name "$1" --gpus 1 --pod-cidr "$2" \
    --state-dir "$DEMO/nodes/$1" --image-command "gpupool/sidecar=$BIN/gpupool-sidecar" \
    --on-exit delete >"$DEMO/$1.log" 2>&1 &
  PIDS+=($!)
}
step "a GPU node joins (a kubelet stand-in advertising one nvidia.com/gpu)"
start_node gpu-node-a 127.0.10.0/24
until [[ $(kubectl get nodes --no-headers 2>/dev/null | grep -c ' Ready') -ge 1 ]]; do sleep 0.5; done
kubectl get nodes -L nvidia.com/gpu.product

step "starting the operator (two replicas: one leads through a Lease)"
for i in 1 2; do
  RUST_LOG=info "$BIN/gpupool-operator" --log-format text \
    --http-addr 127.0.0.1:0 --lease-namespace "$NS" --identity "operator-$i" \
    --telemetry-interval 2s --telemetry-timeout 1s >"$DEMO/operator-$i.log" 2>&1 &
  PIDS+=($!)
done

step "applying the pool: HRNet, CBAM-ResUNet, UNet sharing each GPU, sized for 8 users (4/2/2)"
sed "s#@MODELS@#$MODELS#g" examples/demo-pool.yaml | kubectl -n "$NS" apply -f -
kubectl -n "$NS" wait --for=condition=Ready gpool/spheroid --timeout=180s
kubectl -n "$NS" get gpool spheroid
kubectl -n "$NS" get gpool spheroid -o jsonpath='{range .status.plan.models[*]}{.name}: {.precision} batch {.batchSize} x {.slots} slots, reserves {.reservedBytes} B{"\n"}{end}'
kubectl -n "$NS" get pods -o wide

pod_urls() {
  kubectl -n "$NS" get pods -l gpupool.io/pool=spheroid \
    -o jsonpath='{range .items[?(@.status.podIP)]}http://{.status.podIP}:8080 {end}'
}
step "one request through the original API"
URL=$(pod_urls | awk '{print $1}')
curl -s -F "file=@$DEMO/spheroids.png" -F model=hrnet -F threshold=0.5 "$URL/api/v1/segment" \
  | python -c 'import json,sys; r=json.load(sys.stdin); print({k: r[k] for k in ("success","model_used","image_size","processing_time","batch_size_used")}, len(r["polygons"]), "polygons")'

step "traffic: 16 closed-loop clients for 40 s; the queue telemetry drives the replicas up"
TARGETS=(); for u in $(pod_urls); do TARGETS+=(--target "$u"); done
"$BIN/gpupool-loadgen" "${TARGETS[@]}" --model hrnet --model hrnet --model cbam_resunet --model unet_spherohq \
  --image "$DEMO/spheroids.png" --clients 16 --seconds 40 >"$DEMO/load.json" 2>"$DEMO/load.log" &
LOAD=$!
for _ in $(seq 20); do
  sleep 3
  kubectl -n "$NS" get gpool spheroid --no-headers
done
wait "$LOAD" || true
cat "$DEMO/load.log"
kubectl -n "$NS" get pods -o wide
kubectl -n "$NS" get events --field-selector involvedObject.kind=InferencePool --sort-by=.lastTimestamp | tail -8

PENDING=$(kubectl -n "$NS" get pods --field-selector=status.phase=Pending --no-headers 2>/dev/null | wc -l)
if [[ "$PENDING" -gt 0 ]]; then
  step "$PENDING replica(s) Pending (no free GPU): a cluster autoscaler would add nodes — we start $PENDING"
  kubectl -n "$NS" get pods --field-selector=status.phase=Pending
  kubectl -n "$NS" get events --field-selector reason=FailedScheduling -o jsonpath='{.items[-1:].message}{"\n"}'
  for i in $(seq "$PENDING"); do start_node "gpu-node-$((i + 1))" "127.0.$((10 + i)).0/24"; done
  kubectl -n "$NS" wait --for=condition=Ready pods --all --timeout=120s
  kubectl -n "$NS" get pods -o wide
fi

step "the pool now"
for _ in $(seq 60); do  # the operator records the new pod's readiness on its next reconcile
  [[ $(kubectl -n "$NS" get gpool spheroid -o jsonpath='{.status.readyReplicas}/{.spec.replicas}') =~ ^([0-9]+)/\1$ ]] && break
  sleep 0.5
done
kubectl -n "$NS" get gpool spheroid
kubectl -n "$NS" get gpool spheroid -o jsonpath='{.status.telemetry}{"\n"}'
echo "logs: $DEMO/*.log"
