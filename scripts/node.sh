#!/usr/bin/env bash
# A node that runs pods, added to the local control plane of scripts/kube.sh: kubelet,
# kube-scheduler and kube-proxy built from the same Debian source; containerd, runc and
# the CNI plugins from Debian; a bridge pod network private to this machine; cluster DNS
# (dnsmasq serving the API's Services under cluster.local, NXDOMAIN for other names there); the project's images loaded
# from scripts/images.sh (no registry).
#
#   scripts/node.sh up       install/build what is missing, start, wait for the node to be Ready
#   scripts/node.sh down     stop it and undo every host change it made
#   scripts/node.sh status
#   scripts/node.sh env      CONTAINERD_ADDRESS for scripts/images.sh load
#
# The pod network (10.244.0.0/24 on bridge rtbr0, gateway and DNS 10.244.0.1) is closed:
# pods have routes to the pod subnet and the Service range only, nothing is masqueraded,
# and a FORWARD rule drops anything from the pod subnet not addressed to it. Pods reach
# each other, Services and the API server (Service 10.96.0.1, or 10.244.0.1:16443);
# nothing else. The host reaches Service IPs (kube-proxy) and pod IPs.
#
# Host changes, all undone by `down`: sysctls (recorded before), iptables chains
# RT-NODE-*, the bridge and its routes, mounts under the kubelet's root, /var/log/pods,
# network namespaces of pods. Needs root (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_HOME=${KUBE_HOME:-$HOME/.cache/realtime-operator/kube}
NODE=$KUBE_HOME/node
RUN_DIR=$KUBE_HOME/run
. scripts/lib.sh
BIN=$KUBE_HOME/bin
PKI=$KUBE_HOME/pki
API_PORT=${KUBE_API_PORT:-16443}
NODE_NAME=realtime-node
BRIDGE=rtbr0
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
SOCK=$NODE/containerd/containerd.sock
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet
  kernel.panic kernel.panic_on_oops vm.overcommit_memory kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

log() { printf 'node: %s\n' "$*" >&2; }

install() {
  local missing=()
  for cmd in containerd:containerd runc:runc iptables:iptables conntrack:conntrack dnsmasq:dnsmasq-base ip:iproute2; do
    command -v "${cmd%%:*}" >/dev/null || missing+=("${cmd##*:}")
  done
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The packages' own services stay off: this script runs its own containerd.
  (service containerd stop >/dev/null 2>&1 || true)
  scripts/kube.sh build-node
}

start() { spawn "$@"; }
stop() { stop_pid "$1"; }

# The kubelet and kube-proxy create KUBE-* chains in filter, nat and mangle (the
# kubelet's KUBE-FIREWALL even hooks INPUT and OUTPUT). Those that existed before `up`
# (another Kubernetes on this host) are recorded and left alone on `down`.
kube_chains() {
  local t
  for t in filter nat mangle; do
    iptables -t "$t" -S 2>/dev/null | awk -v t="$t" '$1 == "-N" && $2 ~ /^KUBE-/ {print t, $2}'
  done
}

record_kube_chains() {
  [ -f "$NODE/kube-chains.saved" ] && return
  mkdir -p "$NODE"
  kube_chains >"$NODE/kube-chains.saved"
}

remove_kube_chains() {
  local before=$NODE/kube-chains.saved mine t c
  [ -f "$before" ] || return 0
  mine=$(kube_chains | grep -vxF -f "$before" || true)
  # Jumps into our chains from any chain first, then the chains themselves.
  for t in filter nat mangle; do
    { iptables -t "$t" -S 2>/dev/null | grep -E '^-A .* -j KUBE-' || true; } | while read -r rule; do
      c=$(sed -E 's/.* -j (KUBE-[^ ]+).*/\1/' <<<"$rule")
      grep -qxF "$t $c" <<<"$mine" || continue
      # shellcheck disable=SC2086
      eval "iptables -t $t ${rule/-A/-D}" 2>/dev/null || true
    done
  done
  while read -r t c; do
    [ -n "$c" ] && iptables -t "$t" -F "$c" 2>/dev/null || true
  done <<<"$mine"
  while read -r t c; do
    [ -n "$c" ] && iptables -t "$t" -X "$c" 2>/dev/null || true
  done <<<"$mine"
  rm -f "$before"
}

record_sysctls() {
  [ -f "$NODE/sysctls.saved" ] && return
  mkdir -p "$NODE"
  local k
  for k in "${SYSCTLS[@]}"; do
    [ -e "/proc/sys/${k//.//}" ] && echo "$k=$(cat "/proc/sys/${k//.//}")"
  done >"$NODE/sysctls.saved"
}

restore_sysctls() {
  [ -f "$NODE/sysctls.saved" ] || return 0
  local line
  while IFS= read -r line; do
    echo "${line#*=}" >"/proc/sys/$(echo "${line%%=*}" | tr . /)" 2>/dev/null || log "could not restore ${line%%=*}"
  done <"$NODE/sysctls.saved"
  rm -f "$NODE/sysctls.saved"
}

network_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # The host reaches Service IPs from the bridge address, so pods can answer it.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  echo 1 >/proc/sys/net/ipv4/ip_forward
  modprobe br_netfilter 2>/dev/null || true
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  iptables -N RT-NODE-FORWARD 2>/dev/null || iptables -F RT-NODE-FORWARD
  iptables -A RT-NODE-FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP
  iptables -C FORWARD -j RT-NODE-FORWARD 2>/dev/null || iptables -I FORWARD 1 -j RT-NODE-FORWARD
  # The API server, the kubelet and DNS listen beyond loopback for the pods: only the pod
  # bridge and loopback may reach them.
  iptables -N RT-NODE-INPUT 2>/dev/null || iptables -F RT-NODE-INPUT
  iptables -A RT-NODE-INPUT -i lo -j RETURN
  iptables -A RT-NODE-INPUT -i "$BRIDGE" -j RETURN
  for port in "$API_PORT" 10250 53; do
    iptables -A RT-NODE-INPUT -p tcp --dport "$port" -j DROP
  done
  iptables -A RT-NODE-INPUT -p udp --dport 53 -j DROP
  # Host-network pods (a managed TurnPool's coturn) listen on the node address: it is
  # only reachable from this machine and the pods.
  iptables -A RT-NODE-INPUT -d "$NODE_IP" -j DROP
  iptables -C INPUT -j RT-NODE-INPUT 2>/dev/null || iptables -I INPUT 1 -j RT-NODE-INPUT
}

network_down() {
  for chain in RT-NODE-FORWARD:FORWARD RT-NODE-INPUT:INPUT; do
    local c=${chain%%:*} parent=${chain##*:}
    while iptables -D "$parent" -j "$c" 2>/dev/null; do :; done
    iptables -F "$c" 2>/dev/null || true
    iptables -X "$c" 2>/dev/null || true
  done
  # kube-proxy's chains (it is stopped by now).
  if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  # The kubelet's (KUBE-FIREWALL, KUBE-MARK-*, canaries), which nothing else removes.
  remove_kube_chains
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
}

write_configs() {
  mkdir -p "$NODE"/{containerd,cni/net.d,cni/ipam,kubelet,dns,runc}
  cat >"$NODE/containerd/config.toml" <<EOT
version = 2
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.2"
  # This VM lacks CAP_SYS_RESOURCE: without this no pod sandbox starts (STACK.md).
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni/net.d"
EOT
  cat >"$NODE/cni/net.d/10-realtime.conflist" <<EOT
{
  "cniVersion": "0.4.0",
  "name": "realtime-pods",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$NODE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOT
  # Pods resolve through the cluster DNS only; no search domains of the host leak in.
  printf 'nameserver %s\n' "$NODE_IP" >"$NODE/kubelet/resolv.conf"
  cat >"$NODE/kubelet/config.yaml" <<EOT
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $NODE/kubelet/resolv.conf
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
EOT
  local token
  token=$(awk -F, '$2=="system:node:'"$NODE_NAME"'"{print $1}' "$PKI/tokens.csv")
  if [ -z "$token" ]; then
    log "the API server's token file has no node token: restart the control plane (scripts/kube.sh down; up)"
    exit 1
  fi
  local kubeconfig
  for kubeconfig in kubelet kube-proxy scheduler; do
    cat >"$NODE/$kubeconfig.kubeconfig" <<EOK
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: node
  user: {token: "$token"}
contexts:
- name: local
  context: {cluster: local, user: node}
current-context: local
EOK
  done
}

dns_hosts() {
  "$BIN/kubectl" --kubeconfig "$KUBE_HOME/admin.kubeconfig" get svc -A \
    -o jsonpath='{range .items[*]}{.spec.clusterIP} {.metadata.name}.{.metadata.namespace}.svc.cluster.local{"\n"}{end}' 2>/dev/null \
    | awk '$1 != "None" && $1 != ""'
}

# Keeps dnsmasq's hosts file equal to the API's Services (dnsmasq re-reads it on SIGHUP).
dns_sync() {
  local hosts=$NODE/dns/hosts tmp=$NODE/dns/hosts.new
  while true; do
    if dns_hosts >"$tmp" && ! cmp -s "$tmp" "$hosts"; then
      mv "$tmp" "$hosts"
      pid_alive dnsmasq && kill -HUP "$(cat "$RUN_DIR/dnsmasq.pid")"
    fi
    sleep 1
  done
}

up() {
  install
  scripts/kube.sh status >/dev/null 2>&1 || { log "start the control plane first: scripts/kube.sh up"; exit 1; }
  mkdir -p "$RUN_DIR" "$NODE"
  record_sysctls
  record_kube_chains
  write_configs
  network_up
  # The API server must be reachable from pods: the control plane restarts it for the node.
  KUBE_NODE_IP=$NODE_IP scripts/kube.sh serve-node
  start containerd containerd --config "$NODE/containerd/config.toml"
  for _ in $(seq 1 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
  [ -S "$SOCK" ] || { log "containerd did not start:"; tail -20 "$RUN_DIR/containerd.log" >&2; exit 1; }
  CONTAINERD_ADDRESS=$SOCK scripts/images.sh load pause
  touch "$NODE/dns/hosts"
  # --local: authoritative for cluster.local, so an unknown name there is NXDOMAIN (as
  # with CoreDNS), not REFUSED, which makes glibc stop walking the search list: a pod of
  # another namespace resolving `mongo.chat.svc` first asks for
  # `mongo.chat.svc.<its-ns>.svc.cluster.local` and must be told it does not exist.
  start dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --addn-hosts="$NODE/dns/hosts" \
    --local=/cluster.local/ \
    --listen-address="$NODE_IP" --bind-interfaces --domain-needed --user=root --log-facility=-
  dns_sync >"$RUN_DIR/dns-sync.log" 2>&1 &
  echo $! >"$RUN_DIR/dns-sync.pid"
  start scheduler "$BIN/kube-scheduler" --kubeconfig="$NODE/scheduler.kubeconfig" \
    --authentication-kubeconfig="$NODE/scheduler.kubeconfig" --authorization-kubeconfig="$NODE/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --port=0 --leader-elect=false
  start kubelet "$BIN/kubelet" --config="$NODE/kubelet/config.yaml" --kubeconfig="$NODE/kubelet.kubeconfig" \
    --root-dir="$NODE/kubelet/root" --cert-dir="$NODE/kubelet/pki" --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" \
    --pod-infra-container-image=registry.k8s.io/pause:3.2 --register-node=true
  start kube-proxy "$BIN/kube-proxy" --kubeconfig="$NODE/kube-proxy.kubeconfig" --hostname-override="$NODE_NAME" \
    --cluster-cidr="$POD_CIDR" --proxy-mode=iptables --oom-score-adj=0 --conntrack-max-per-core=0 \
    --bind-address=127.0.0.1 --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249
  wait_node_ready
  log "ready: node $NODE_NAME runs pods; CONTAINERD_ADDRESS=$SOCK"
}

wait_node_ready() {
  local kubectl=("$BIN/kubectl" --kubeconfig "$KUBE_HOME/admin.kubeconfig")
  for _ in $(seq 1 120); do
    if "${kubectl[@]}" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; then
      return
    fi
    for name in containerd kubelet kube-proxy scheduler dnsmasq; do
      pid_alive "$name" || { log "$name exited:"; tail -30 "$RUN_DIR/$name.log" >&2; exit 1; }
    done
    sleep 0.5
  done
  log "node not Ready in 60 s"; tail -30 "$RUN_DIR/kubelet.log" >&2; exit 1
}

down() {
  [ -f "$RUN_DIR/dns-sync.pid" ] && { kill "$(cat "$RUN_DIR/dns-sync.pid")" 2>/dev/null || true; rm -f "$RUN_DIR/dns-sync.pid"; }
  stop kube-proxy
  stop kubelet
  stop scheduler
  stop dnsmasq
  # Pods' containers die with containerd's shims; their mounts and namespaces stay.
  if pid_alive containerd; then
    local c
    for c in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  pkill -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $SOCK" 2>/dev/null || true
  # Mounts below our folders (kubelet volumes, containerd rootfs and sandboxes), deepest first.
  { grep -o " $NODE/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf /var/log/pods /var/log/containers /var/lib/cni/networks/realtime-pods
  # The kubelet's cgroups (emptied above), deepest first.
  find /sys/fs/cgroup -depth -type d -name 'kubepods*' 2>/dev/null | while read -r d; do
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  network_down
  restore_sysctls
  rm -rf "$NODE/kubelet/root" "$NODE/containerd/state"
  if scripts/kube.sh status >/dev/null 2>&1; then
    "$BIN/kubectl" --kubeconfig "$KUBE_HOME/admin.kubeconfig" delete node "$NODE_NAME" --ignore-not-found >/dev/null 2>&1 || true
  fi
}

status() {
  local rc=0
  for name in containerd kubelet kube-proxy scheduler dnsmasq; do
    if pid_alive "$name"; then echo "$name up pid $(cat "$RUN_DIR/$name.pid")"; else echo "$name down"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export CONTAINERD_ADDRESS=$SOCK" ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
