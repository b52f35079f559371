#!/usr/bin/env bash
# Runs the whole test suite: Rust unit and integration tests (the operator's against a
# real kube-apiserver), then the end-to-end tests that drive real `realtime` processes
# with the official socket.io-client. Starts the local stack and the local control plane
# (installing and building them on first use); stops what this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

started_stack=0
if ! scripts/stack.sh status >/dev/null 2>&1; then
  scripts/stack.sh up
  started_stack=1
fi
started_kube=0
if ! scripts/kube.sh status >/dev/null 2>&1; then
  scripts/kube.sh up
  started_kube=1
fi
cleanup() {
  if [ "$started_stack" = 1 ]; then scripts/stack.sh down; fi
  if [ "$started_kube" = 1 ]; then scripts/kube.sh down; fi
}
trap cleanup EXIT
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
