#!/usr/bin/env bash
# Builds the real binaries the tests and the demo run (kube-apiserver, etcd, kubectl, helm,
# sops, age, ksops) from the Go module proxy, pinned, into an ignored folder. A warm cache
# (the folder, or Go's own build cache) makes a rerun take seconds.
set -euo pipefail

K8S_VERSION=1.36.3          # k8s.io/kubernetes; staging modules are v0.${minor}.${patch}
HELM_VERSION=3.21.4
SOPS_VERSION=3.11.0
AGE_VERSION=1.2.1
KSOPS_VERSION=4.5.1
ETCD_VERSION=3.6.8         # the etcd k8s.io/kubernetes itself requires

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${HB_BIN_DIR:-$root/.bin}"
stamp="k8s-$K8S_VERSION etcd-$ETCD_VERSION helm-$HELM_VERSION sops-$SOPS_VERSION age-$AGE_VERSION ksops-$KSOPS_VERSION"
mkdir -p "$bin"
if [ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "test binaries: cached in $bin"
  exit 0
fi

command -v go >/dev/null || { echo "test-binaries: 'go' is required to build the test binaries" >&2; exit 1; }
start=$(date +%s)
export GOFLAGS=-buildvcs=false CGO_ENABLED=0

# k8s.io/kubernetes replaces its staging modules with local paths, which a plain
# 'go install' refuses; a wrapper module pins them to their published v0.x twins.
work="$bin/.k8s-wrapper"
mkdir -p "$work"
minor_patch="${K8S_VERSION#1.}"
{
  echo "module homelab-bootstrap/test-binaries"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes v$K8S_VERSION"
  echo
  echo "replace ("
  for m in api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider \
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api \
    cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms \
    kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics \
    mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller streaming; do
    echo "	k8s.io/$m => k8s.io/$m v0.$minor_patch"
  done
  echo ")"
} > "$work/go.mod"
cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
(
  cd "$work"
  go mod tidy -e >/dev/null 2>&1 || true
  go get k8s.io/kubernetes@v$K8S_VERSION go.etcd.io/etcd/server/v3@v$ETCD_VERSION >/dev/null
  go mod tidy -e >/dev/null 2>&1 || true
  go build -trimpath -ldflags=-s -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  go build -trimpath -ldflags=-s -o "$bin/kubectl" k8s.io/kubernetes/cmd/kubectl
  go build -trimpath -ldflags=-s -o "$bin/etcd" go.etcd.io/etcd/server/v3
)
GOBIN="$bin" go install -trimpath -ldflags=-s "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
GOBIN="$bin" go install -trimpath -ldflags=-s "github.com/getsops/sops/v3/cmd/sops@v$SOPS_VERSION"
GOBIN="$bin" go install -trimpath -ldflags=-s "filippo.io/age/cmd/...@v$AGE_VERSION"
GOBIN="$bin" go install -trimpath -ldflags=-s "github.com/viaduct-ai/kustomize-sops@v$KSOPS_VERSION"
[ -x "$bin/kustomize-sops" ] && mv "$bin/kustomize-sops" "$bin/ksops"

for b in kube-apiserver etcd kubectl helm sops age age-keygen ksops; do
  [ -x "$bin/$b" ] || { echo "test-binaries: $b was not built" >&2; exit 1; }
done
echo "$stamp" > "$bin/.stamp"
echo "test binaries: built in $(( $(date +%s) - start )) s into $bin"
