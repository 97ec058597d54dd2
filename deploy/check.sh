#!/usr/bin/env bash
# Validates deploy/ with the real tools, installing them from Debian and
# PyPI if missing (no other downloads):
#   - promtool (Debian package `prometheus`): check config, check rules and
#     the alert unit tests;
#   - kubernetes-validate (PyPI, ships the Kubernetes JSON schemas):
#     strict schema check of every manifest under kubernetes/.
# The structural checks that need no tools run in `cargo test -p giftx-tests
# --test deploy`.
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v promtool >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
venv=${GIFTX_DEPLOY_VENV:-../target/tools/deploy-venv}
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet kubernetes-validate
fi

echo "== promtool check config"
promtool check config prometheus/prometheus.yml
echo "== promtool check rules"
promtool check rules prometheus/alerts.yaml
echo "== promtool test rules"
promtool test rules prometheus/alerts.test.yaml

echo "== kubernetes-validate --strict"
# kustomization.yaml has no Kubernetes schema (it is kustomize's own file).
manifests=()
for f in kubernetes/*.yaml kubernetes-demo/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
"$venv/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"
echo "deploy/check.sh: all checks passed"
