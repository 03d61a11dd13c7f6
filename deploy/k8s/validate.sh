#!/usr/bin/env bash
# Renders every overlay under deploy/k8s/overlays (each directory holding a kustomization.yaml)
# with `kubectl kustomize`, validates the output offline against the JSON schemas of Kubernetes
# $MISTNET_K8S_VERSION (default 1.32.0) with kubernetes-validate --strict (an unknown or misspelt
# field is an error), then checks with check.py that what the deployment needs is really there
# (the StatefulSet's volumeClaimTemplate, the probes, the Secrets, the NetworkPolicies, the GPU,
# the KubeEdge placement, one token per edge...), so an empty or gutted overlay fails too.
#
# Usage: deploy/k8s/validate.sh [OUT_DIR]   (OUT_DIR: keep the rendered manifests there)
# Needs kubectl (with its built-in kustomize) and python3 with venv. kubernetes-validate and its
# dependencies (requirements.txt, pinned) are installed from PyPI into $MISTNET_K8S_VENV (default
# target/k8s-venv of the repository) the first time; nothing else is downloaded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=${MISTNET_K8S_VERSION:-1.32.0}
venv=${MISTNET_K8S_VENV:-${CARGO_TARGET_DIR:-$root/target}/k8s-venv}

command -v kubectl >/dev/null || { echo "validate.sh: kubectl is needed (kubectl kustomize renders the overlays)" >&2; exit 2; }

# The venv, once; a second run waits for the first to finish installing (flock where present).
install_venv() {
    local stamp="$venv/.requirements"
    if [[ -x "$venv/bin/kubernetes-validate" ]] && cmp -s "$here/requirements.txt" "$stamp"; then
        return
    fi
    echo "validate.sh: installing kubernetes-validate into $venv (from PyPI)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
}
mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null; then
    exec 9>"$venv.lock"
    flock 9
fi
install_venv

if [[ $# -ge 1 ]]; then
    out=$1
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

overlays=()
while IFS= read -r dir; do overlays+=("$dir"); done < <(find "$here/overlays" -name kustomization.yaml -not -path '*/edges/*' -printf '%h\n' | sort)
[[ ${#overlays[@]} -gt 0 ]] || { echo "validate.sh: no overlay under $here/overlays" >&2; exit 1; }

failed=0
for dir in "${overlays[@]}"; do
    name=${dir#"$here/overlays/"}
    file="$out/${name//\//-}.yaml"
    if ! kubectl kustomize "$dir" >"$file"; then
        echo "FAIL $name: kubectl kustomize failed" >&2
        failed=1
        continue
    fi
    if "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$version" --quiet "$file"; then
        echo "ok   $name: $(grep -c '^kind: ' "$file") objects valid against Kubernetes $version (strict)"
    else
        echo "FAIL $name: not valid against Kubernetes $version (above)" >&2
        failed=1
    fi
done
[[ $failed == 0 ]] || exit 1

"$venv/bin/python" "$here/check.py" "$here/overlays" "$out"
