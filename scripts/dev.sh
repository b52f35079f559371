#!/usr/bin/env bash
# Brings up the whole product on this machine, as a platform team would run it:
#   1. the local control plane (scripts/kube.sh: kube-apiserver, controller-manager),
#   2. a node that runs pods (scripts/node.sh: kubelet, scheduler, kube-proxy, containerd,
#      a bridge pod network with no route out, cluster DNS),
#   3. the container images (scripts/images.sh: built without a Docker daemon, cached),
#   4. the operator from the Helm chart,
#   5. the example installation (kubectl apply -f examples/: Redis, the broker, MongoDB,
#      a RealtimeCluster, a managed TurnPool, a KafkaTopic and a MongoIndex), waited for until Ready,
# then seeds a conversation and prints the tenant endpoint and ready-made tokens.
# The first run builds Kubernetes and the release binaries (20–25 minutes on two
# cores, each step says what it does); later runs take about a minute.
#
#   scripts/dev.sh               the whole product (needs root: the node changes the host)
#   scripts/dev.sh down          uninstalls it and stops node and control plane
#   scripts/dev.sh --data-plane  only the data plane (role all) on 127.0.0.1:3000 against
#                                the local stack, no Kubernetes (ctrl-c stops it)
set -euo pipefail
cd "$(dirname "$0")/.."

RELEASE=${DEV_RELEASE:-rt}
SYSTEM_NS=${DEV_SYSTEM_NAMESPACE:-realtime-system}
NS=${DEV_NAMESPACE:-chat}
STEPS=6
step=0
started=$SECONDS

progress() {
  step=$((step + 1))
  printf '\n==> [%d/%d] %s (%ds elapsed)\n' "$step" "$STEPS" "$1" "$((SECONDS - started))"
}

data_plane() {
  scripts/stack.sh up
  eval "$(scripts/stack.sh env)"
  export JWT_SECRET=${JWT_SECRET:-dev-secret-change-me}
  export JWT_ISSUER=${JWT_ISSUER:-realtime-dev}
  export JWT_AUDIENCE=${JWT_AUDIENCE:-realtime}
  export LISTEN_ADDR=${LISTEN_ADDR:-127.0.0.1:3000}
  export RUST_LOG=${RUST_LOG:-info,rdkafka=warn}

  cargo build --release --bins
  local seed
  seed=$(target/release/realtime-dev seed --tenant demo --conversation general --users alice,bob)
  cat <<EOM

Realtime data plane (role all)
  Socket.IO:  http://$LISTEN_ADDR/chat   (namespace /chat, auth {"token": "<JWT>"})
  health:     http://$LISTEN_ADDR/readyz   metrics: http://$LISTEN_ADDR/metrics
  seeded:     tenant demo, conversation "general", users alice (owner) and bob
$(echo "$seed" | sed -n 's/^TOKEN_/  token /p' | sed 's/=/: /')

EOM
  try_it "http://$LISTEN_ADDR"
  exec target/release/realtime --role all
}

try_it() {
  cat <<EOM
Try it (in e2e/, after npm ci):
  node -e 'const s=require("socket.io-client").io("$1/chat",{auth:{token:process.argv[1]}});s.on("connect",async()=>{console.log(await s.emitWithAck("room:join",{conversationId:"general"}));console.log(await s.emitWithAck("message:send",{conversationId:"general",clientMessageId:String(Date.now()),content:{type:"text",text:"hi"}}));s.on("message:persisted",m=>{console.log("persisted",m);process.exit(0)})})' <alice's token>
EOM
}

product() {
  [ "$(id -u)" = 0 ] || { echo "dev: the local node changes the host (network, mounts): run as root, or use --data-plane" >&2; exit 1; }
  progress "control plane: kube-apiserver and kube-controller-manager (the first run builds them from Debian's Kubernetes source, ~6 min)"
  if scripts/kube.sh status >/dev/null 2>&1; then echo "dev: already running"; else scripts/kube.sh up; fi
  eval "$(scripts/kube.sh env)"
  progress "a node that runs pods: containerd, kubelet, scheduler, kube-proxy, pod network, cluster DNS (the first run builds them, ~5 min)"
  if scripts/node.sh status >/dev/null 2>&1; then echo "dev: already running"; else scripts/node.sh up; fi
  progress "container images: operator, realtime, coturn, redis, kafka, mongo, pause (the first run compiles the release binaries, ~10 min)"
  scripts/images.sh load
  progress "the operator from the Helm chart (release $RELEASE in $SYSTEM_NS)"
  # Helm installs CRDs only where none exist: apply the current ones, as an upgrade would
  # (1.20's kubectl does not know CEL rules; the API server ignores them).
  kubectl apply --validate=false -f helm/realtime-operator/crds/ >/dev/null
  # Helm 4 applies CRDs server-side by default; Kubernetes 1.20 refuses a server-side
  # apply of CRDs carrying CEL rules it does not know, hence --server-side=false.
  helm upgrade --install "$RELEASE" helm/realtime-operator -n "$SYSTEM_NS" --create-namespace \
    --server-side=false --wait --timeout 300s
  kubectl -n "$SYSTEM_NS" get pods -o wide
  progress "the example installation in namespace $NS (kubectl apply -f examples/), until Ready"
  kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS"
  kubectl -n "$NS" apply -f examples/
  kubectl -n "$NS" wait --for=condition=Ready rtc/chat turnpool/calls kt/audit-events mi/messages-by-sender --timeout=300s
  kubectl -n "$NS" get rtc,turnpool,pods -o wide
  progress "a demo conversation and tokens (realtime-dev, shipped in the data-plane image)"
  local seed ip port
  seed=$(kubectl -n "$NS" exec deploy/chat-gateway -- realtime-dev seed --tenant demo --conversation general --users alice,bob)
  ip=$(kubectl -n "$NS" get svc chat-gateway -o jsonpath='{.spec.clusterIP}')
  port=$(kubectl -n "$NS" get svc chat-gateway -o jsonpath='{.spec.ports[0].port}')
  cat <<EOM

Realtime Operator is running (${SECONDS}s)
  kubectl:     eval "\$(scripts/kube.sh env)"; kubectl -n $NS get rtc,turnpool,pods
  tenant:      http://$ip:$port/chat   (Socket.IO namespace /chat, auth {"token": "<JWT>"};
               the gateway Service's cluster IP, reachable from this machine)
  ICE servers: curl -H "authorization: Bearer <token>" http://$ip:$port/v1/ice-servers
  seeded:      tenant demo, conversation "general", users alice (owner) and bob
$(echo "$seed" | sed -n 's/^TOKEN_/  token /p' | sed 's/=/: /')

EOM
  try_it "http://$ip:$port"
  echo
  echo "Stop everything: scripts/dev.sh down"
}

down() {
  if scripts/kube.sh status >/dev/null 2>&1; then
    eval "$(scripts/kube.sh env)"
    kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s || true
    helm uninstall "$RELEASE" -n "$SYSTEM_NS" --wait --timeout 120s 2>/dev/null || true
  fi
  scripts/kube.sh down
}

case "${1:-}" in
  "") product ;;
  down) down ;;
  --data-plane) data_plane ;;
  *) echo "usage: $0 [down | --data-plane]" >&2; exit 2 ;;
esac
