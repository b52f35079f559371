#!/usr/bin/env bash
# Runs the whole test suite: Rust unit and integration tests (the operator's against a
# real kube-apiserver), then the end-to-end tests that drive real `realtime` processes
# with the official socket.io-client, then the product itself on a local node that runs
# pods (images, helm install, kubectl apply -f examples/, chat and TURN from the host).
# Starts the local stack, the local control plane and the node (installing and building
# them on first use); stops what this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

# The cleanup trap comes first: whatever this script starts is stopped again, also when
# a start fails half-way.
started_stack=0
started_kube=0
started_node=0
cleanup() {
  if [ "$started_node" = 1 ]; then scripts/node.sh down; fi
  if [ "$started_stack" = 1 ]; then scripts/stack.sh down; fi
  if [ "$started_kube" = 1 ]; then scripts/kube.sh down; fi
}
trap cleanup EXIT
if ! scripts/stack.sh status >/dev/null 2>&1; then
  started_stack=1
  scripts/stack.sh up
fi
if ! scripts/kube.sh status >/dev/null 2>&1; then
  started_kube=1
  scripts/kube.sh up
fi
eval "$(scripts/stack.sh env)"
eval "$(scripts/kube.sh env)"

echo "== cargo build"
cargo build --workspace --bins
echo "== helm chart"
scripts/helm-check.sh
echo "== cargo test"
cargo test --workspace
echo "== e2e (node $(node --version), socket.io-client)"
(cd e2e && npm ci --no-audit --no-fund --loglevel=error && npm test)
echo "== the product on a node that runs pods"
if ! scripts/node.sh status >/dev/null 2>&1; then
  started_node=1
  scripts/node.sh up
fi
scripts/images.sh load
(cd e2e && npm run test:cluster)
