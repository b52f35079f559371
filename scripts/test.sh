#!/usr/bin/env bash
# Runs the whole test suite: Rust unit and integration tests, then the end-to-end tests
# that drive real `realtime` processes with the official socket.io-client. Starts the
# local stack (and installs it on first use); stops it again if this script started it.
set -euo pipefail
cd "$(dirname "$0")/.."

started_stack=0
if ! scripts/stack.sh status >/dev/null 2>&1; then
  scripts/stack.sh up
  started_stack=1
fi
cleanup() { if [ "$started_stack" = 1 ]; then scripts/stack.sh down; fi; }
trap cleanup EXIT
eval "$(scripts/stack.sh env)"

echo "== cargo build"
cargo build --workspace --bins
echo "== cargo test"
cargo test --workspace
echo "== e2e (node $(node --version), socket.io-client)"
(cd e2e && npm ci --no-audit --no-fund --loglevel=error && npm test)
