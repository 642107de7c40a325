#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, for gpupool's integration tests and demo.
#
#   control-plane.sh install   Debian packages and the Kubernetes source (idempotent)
#   control-plane.sh build     kube-apiserver, kube-controller-manager, kube-scheduler (cached by version)
#   control-plane.sh up DIR    start etcd + the three components with a fresh data dir under DIR,
#                              wait until ready, write DIR/kubeconfig; prints that path
#   control-plane.sh down DIR  stop what `up DIR` started and remove its data
#
# Why a build from source: no container engine runs here and no release binary can be downloaded;
# Debian ships the Kubernetes 1.20.2 source with its vendor tree (see shared docs/local-control-plane.md).
set -euo pipefail

K8S_VERSION="1.20.2"
DEB_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
CACHE="${GPUPOOL_CACHE:-$HOME/.cache/gpupool}"
BIN_DIR="$CACHE/k8s-$K8S_VERSION/bin"
SRC_ROOT="$CACHE/k8s-src"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler)

log() { echo "[control-plane] $*" >&2; }

sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

cmd_install() {
  local pkgs=(etcd-server golang-go golang-github-modern-go-reflect2-dev dpkg-dev openssl curl)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  local src_list=/etc/apt/sources.list.d/gpupool-deb-src.sources
  if [[ ! -f "$src_list" ]]; then
    log "adding deb-src entries for bookworm"
    sudo_if_needed tee "$src_list" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    sudo_if_needed apt-get update -qq
  fi
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [[ ! -d "$SRC_ROOT/src/k8s.io/kubernetes/cmd" ]]; then
    log "fetching the kubernetes $DEB_VERSION source package"
    mkdir -p "$SRC_ROOT/dl"
    (cd "$SRC_ROOT/dl" && apt-get source -qq --download-only "kubernetes=$DEB_VERSION" >/dev/null)
    local orig
    orig=$(ls "$SRC_ROOT"/dl/kubernetes_*.orig.tar.* | head -1)
    rm -rf "$SRC_ROOT/unpack" && mkdir -p "$SRC_ROOT/unpack"
    tar -xf "$orig" -C "$SRC_ROOT/unpack"
    local top
    top=$(find "$SRC_ROOT/unpack" -mindepth 1 -maxdepth 1 -type d | head -1)
    mkdir -p "$SRC_ROOT/src/k8s.io"
    rm -rf "$SRC_ROOT/src/k8s.io/kubernetes"
    mv "$top" "$SRC_ROOT/src/k8s.io/kubernetes"
  fi
}

cmd_build() {
  local all_built=1
  for c in "${COMPONENTS[@]}"; do [[ -x "$BIN_DIR/$c" ]] || all_built=0; done
  ((all_built)) && return 0
  cmd_install
  local k8s="$SRC_ROOT/src/k8s.io/kubernetes"
  export GOPATH="$SRC_ROOT" GO111MODULE=off GOFLAGS= GOCACHE="$CACHE/go-build-cache"
  local caller_dir=$PWD # `up DIR` resolves a relative DIR after this build
  cd "$k8s"
  # reflect2 1.0.1 crashes Go >= 1.18 builds on the first custom resource; Debian has 1.0.2.
  if ! grep -q 'Go 1.18' vendor/github.com/modern-go/reflect2/go_above_118.go 2>/dev/null \
     && [[ ! -f vendor/github.com/modern-go/reflect2/.gpupool-replaced ]]; then
    log "replacing vendored reflect2 with Debian's 1.0.2"
    rm -rf vendor/github.com/modern-go/reflect2
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
    touch vendor/github.com/modern-go/reflect2/.gpupool-replaced
  fi
  if [[ ! -s pkg/generated/openapi/zz_generated.openapi.go ]]; then
    log "generating OpenAPI definitions (needed for server-side apply)"
    go build -o "$SRC_ROOT/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    local inputs
    inputs=$(grep -R -l --include='*.go' '+k8s:openapi-gen=' pkg vendor/k8s.io \
      | xargs -n1 dirname | sort -u \
      | grep -v -e '^vendor/k8s.io/code-generator' -e '^vendor/k8s.io/sample-apiserver' \
      | sed 's#^#k8s.io/kubernetes/#' | paste -sd, -)
    "$SRC_ROOT/openapi-gen" -i "$inputs" -p k8s.io/kubernetes/pkg/generated/openapi \
      -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
      -o "$SRC_ROOT/src" >/dev/null
  fi
  mkdir -p "$BIN_DIR"
  local ldflags="-X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitVersion=v$K8S_VERSION \
    -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMajor=1 \
    -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMinor=20 \
    -X k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
  for c in "${COMPONENTS[@]}"; do
    [[ -x "$BIN_DIR/$c" ]] && continue
    log "building $c (minutes on a cold cache)"
    go build -ldflags "$ldflags" -o "$BIN_DIR/$c.tmp" "./cmd/$c"
    mv "$BIN_DIR/$c.tmp" "$BIN_DIR/$c"
  done
  # The binaries are the cache; the Go build cache and the source tree (about 2 GB) only served
  # this build, and disk is what CI machines run short of.
  log "removing the Go build cache and the Kubernetes source"
  cd "$caller_dir"
  rm -rf "$GOCACHE" "$SRC_ROOT"
}

free_port() {
  python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

wait_for() { # url token seconds
  local url=$1 token=$2 deadline=$((SECONDS + $3))
  until curl -fsk -H "Authorization: Bearer $token" "$url" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.3
  done
}

cmd_up() {
  local dir=${1:?usage: up DIR}
  cmd_build
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [[ -f "$dir/pids" ]] && cmd_down "$dir"
  mkdir -p "$dir/etcd" "$dir/certs" "$dir/logs"
  local etcd_port etcd_peer api_port token
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,admin,admin,system:masters" > "$dir/tokens.csv"
  openssl genrsa -out "$dir/certs/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/certs/sa.key" -pubout -out "$dir/certs/sa.pub" 2>/dev/null
  : > "$dir/pids"
  etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" >"$dir/logs/etcd.log" 2>&1 &
  echo $! >> "$dir/pids"
  # The API server's command line is kept in a script so tests can stop and restart it alone.
  cat > "$dir/start-apiserver.sh" <<APISERVER
#!/usr/bin/env bash
exec "$BIN_DIR/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \\
  --bind-address 127.0.0.1 --secure-port "$api_port" --cert-dir "$dir/certs" \\
  --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \\
  --service-account-key-file "$dir/certs/sa.pub" \\
  --service-account-signing-key-file "$dir/certs/sa.key" \\
  --service-account-issuer https://kubernetes.default.svc \\
  --service-cluster-ip-range 10.96.0.0/16 --allow-privileged \\
  --enable-admission-plugins NamespaceLifecycle,ServiceAccount,DefaultStorageClass,ResourceQuota \\
  >>"$dir/logs/kube-apiserver.log" 2>&1
APISERVER
  chmod +x "$dir/start-apiserver.sh"
  "$dir/start-apiserver.sh" &
  echo $! > "$dir/apiserver.pid"
  local server="https://127.0.0.1:$api_port"
  cat > "$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: gpupool-local
  cluster:
    server: $server
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: gpupool-local
  context: {cluster: gpupool-local, user: admin, namespace: default}
current-context: gpupool-local
KC
  if ! wait_for "$server/readyz" "$token" 60; then
    log "kube-apiserver did not become ready; last log lines:"; tail -20 "$dir/logs/kube-apiserver.log" >&2
    return 1
  fi
  "$BIN_DIR/kube-controller-manager" --kubeconfig "$dir/kubeconfig" --leader-elect=false \
    --service-account-private-key-file "$dir/certs/sa.key" --use-service-account-credentials=false \
    --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle' \
    --bind-address 127.0.0.1 --secure-port 0 --port 0 \
    >"$dir/logs/kube-controller-manager.log" 2>&1 &
  echo $! >> "$dir/pids"
  "$BIN_DIR/kube-scheduler" --kubeconfig "$dir/kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 0 --port 0 \
    >"$dir/logs/kube-scheduler.log" 2>&1 &
  echo $! >> "$dir/pids"
  # The default service account appears once the controller-manager runs; pods need it.
  local deadline=$((SECONDS + 60))
  until kubectl --kubeconfig "$dir/kubeconfig" get serviceaccount default >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "default service account never appeared"; return 1; }
    sleep 0.5
  done
  echo "$dir/kubeconfig"
}

cmd_restart_apiserver() { # stop the API server alone, wait SECONDS (default 0), start it again
  local dir=${1:?usage: restart-apiserver DIR [SECONDS]} pause=${2:-0}
  local pid token
  pid=$(cat "$dir/apiserver.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  sleep "$pause"
  "$dir/start-apiserver.sh" &
  echo $! > "$dir/apiserver.pid"
  token=$(cut -d, -f1 "$dir/tokens.csv")
  wait_for "$(awk '/server:/ {print $2}' "$dir/kubeconfig")/readyz" "$token" 60
}

cmd_down() {
  local dir=${1:?usage: down DIR}
  if [[ -f "$dir/apiserver.pid" ]]; then
    echo "$(cat "$dir/apiserver.pid")" >> "$dir/pids"; rm -f "$dir/apiserver.pid"
  fi
  if [[ -f "$dir/pids" ]]; then
    # Reverse order: scheduler, controller-manager, API server, etcd.
    tac "$dir/pids" | while read -r pid; do kill "$pid" 2>/dev/null || true; done
    for pid in $(cat "$dir/pids"); do
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$dir/pids"
  fi
  rm -rf "$dir/etcd"
}

case "${1:-}" in
  install) cmd_install ;;
  build) cmd_build ;;
  up) cmd_up "${2:-}" ;;
  down) cmd_down "${2:-}" ;;
  restart-apiserver) cmd_restart_apiserver "${2:-}" "${3:-0}" ;;
  bin-dir) echo "$BIN_DIR" ;;
  *) echo "usage: $0 install|build|up DIR|down DIR|restart-apiserver DIR [SECONDS]|bin-dir" >&2; exit 2 ;;
esac
