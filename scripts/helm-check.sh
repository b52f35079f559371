#!/usr/bin/env bash
# Lints the chart and proves its rendered output against the running API server:
# `helm lint`, then `helm template --include-crds` piped to `kubectl apply --dry-run=server`,
# for the cluster-wide and the single-namespace variants. Needs `scripts/kube.sh up`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Uses KUBECONFIG when set (e.g. a kind cluster), else the local control plane.
kube_env=$(scripts/kube.sh env)
[ -n "${KUBECONFIG:-}" ] || eval "$(echo "$kube_env" | grep KUBECONFIG)"
command -v helm >/dev/null && command -v kubectl >/dev/null || eval "$(echo "$kube_env" | grep PATH)"
chart=helm/realtime-operator
helm lint --strict "$chart"
kubectl get namespace realtime-system >/dev/null 2>&1 || kubectl create namespace realtime-system >/dev/null
for values in "" "--set watchNamespace=realtime-system"; do
  # --validate=false: kubectl's client-side schema of a 1.20 server does not know
  # x-kubernetes-validations (CEL); the server itself accepts and ignores it.
  # shellcheck disable=SC2086
  helm template rt "$chart" --namespace realtime-system --include-crds $values \
    | kubectl apply --dry-run=server --validate=false -f - >/dev/null
  echo "helm template ${values:-(defaults)}: accepted by the API server (dry run)"
done
# The values schema refuses nonsense.
if helm template rt "$chart" --set replicas=0 >/dev/null 2>&1; then
  echo "values.schema.json accepted replicas=0" >&2; exit 1
fi
echo "values schema refuses replicas=0"
