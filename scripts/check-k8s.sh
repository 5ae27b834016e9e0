#!/usr/bin/env bash
# `make k8s-check`: validate the manifests in k8s/ offline against the
# Kubernetes schemas bundled in PyPI's kubernetes-validate (own venv in .tools/).
# The Kustomization itself has no schema there; its resources are checked.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

K8S_VERSION="${K8S_VERSION:-1.33.0}"
venv="$HERALD_TOOLS/k8s-venv"
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  log "installing kubernetes-validate into $venv (pip)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q kubernetes-validate==1.37.0
fi
mapfile -t files < <(find k8s -name '*.yaml' ! -name kustomization.yaml | sort)
"$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${files[@]}"
# Every resource the kustomization names must exist.
"$venv/bin/python" - <<'PY'
import pathlib, sys, yaml
k = yaml.safe_load(pathlib.Path("k8s/kustomization.yaml").read_text())
missing = [r for r in k.get("resources", []) if not (pathlib.Path("k8s") / r).exists()]
if missing:
    sys.exit(f"k8s/kustomization.yaml names missing resources: {missing}")
PY
log "k8s manifests valid (Kubernetes $K8S_VERSION)"
