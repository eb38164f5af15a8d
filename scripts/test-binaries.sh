#!/usr/bin/env bash
# Builds the real binaries the tests and the demo run (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd, kubectl, kwok, helm 3 and helm 4, sops, age, kustomize, ksops) from the Go module proxy, pinned, into an ignored folder. Needs only `go`.
# A warm cache (the folder, or Go's own build cache) makes a rerun take seconds (about 70 s with
# only Go's cache); from nothing it took 777 s and 1504 s on 2 cores (two measurements; README quotes them).
set -euo pipefail

K8S_VERSION=1.36.3          # k8s.io/kubernetes; staging modules are v0.${minor}.${patch}
HELM_VERSION=3.22.0
HELM4_VERSION=4.3.2          # nixpkgs is moving kubernetes-helm to Helm 4: the Helm suites run on both
KWOK_VERSION=0.8.0          # simulated kubelet: Pods get scheduled and become Ready
SOPS_VERSION=3.11.0
AGE_VERSION=1.2.1
# ksops v4.5.1. Its go.mod says github.com/viaduct-ai/kustomize-sops without /v4, so the v4 tags
# are not valid module versions and only the commit can be asked for.
KSOPS_COMMIT=d9442dc3153d9c16e517a68ce8926c9507386429
ETCD_VERSION=3.6.8         # the etcd k8s.io/kubernetes itself requires
KUSTOMIZE_VERSION=5.8.1    # standalone: `kubectl kustomize` has no --enable-exec, so it drops ksops

script="${BASH_SOURCE[0]}"
root="$(cd "$(dirname "$script")/.." && pwd)"
bin="${HB_BIN_DIR:-$root/.bin}"
required=(kube-apiserver kube-controller-manager kube-scheduler etcd kubectl kwok helm helm4 sops age age-keygen kustomize ksops)
mkdir -p "$bin"

# Two runs at once would share the wrapper module and overwrite each other's outputs; the
# second one waits here and then finds the stamp.
if command -v flock >/dev/null; then
  exec 9>"$bin/.lock"
  flock 9
fi

# The stamp is this script's checksum, so a changed version or build flag rebuilds by itself.
stamp="$(cksum < "$script")"
all_there() { for b in "${required[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
if [ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ] && all_there; then
  echo "test binaries: cached in $bin"
  exit 0
fi

command -v go >/dev/null || { echo "test-binaries: 'go' is required to build the test binaries" >&2; exit 1; }
start=$(date +%s)
export GOFLAGS=-buildvcs=false CGO_ENABLED=0

# Without these the apiserver reports /version as v0.0.0-master, which breaks every
# `kubeVersion` constraint a chart declares and every client-side version check.
k8s_minor="${K8S_VERSION#1.}"
k8s_minor="${k8s_minor%%.*}"
k8s_ldflags="-s"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done
# What helm's own Makefile sets: its version, and the Kubernetes version `helm template` assumes.
helm_ldflags="-s -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done

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
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
(
  cd "$work"
  go mod tidy -e >/dev/null 2>&1 || true
  go get k8s.io/kubernetes@v$K8S_VERSION go.etcd.io/etcd/server/v3@v$ETCD_VERSION >/dev/null
  go mod tidy -e >/dev/null 2>&1 || true
  go build -trimpath -ldflags="$k8s_ldflags" -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  go build -trimpath -ldflags="$k8s_ldflags" -o "$bin/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
  go build -trimpath -ldflags="$k8s_ldflags" -o "$bin/kube-scheduler" k8s.io/kubernetes/cmd/kube-scheduler
  go build -trimpath -ldflags="$k8s_ldflags" -o "$bin/kubectl" k8s.io/kubernetes/cmd/kubectl
  go build -trimpath -ldflags=-s -o "$bin/etcd" go.etcd.io/etcd/server/v3
)
GOBIN="$bin" go install -trimpath -ldflags="$helm_ldflags" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
# Helm 4 lands as helm4 beside helm 3 (HB_HELM picks one for the tests).
helm4_dir="$bin/.helm4"
mkdir -p "$helm4_dir"
GOBIN="$helm4_dir" go install -trimpath -ldflags="-s -X helm.sh/helm/v4/internal/version.version=v$HELM4_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean -X helm.sh/helm/v4/internal/version.metadata=" "helm.sh/helm/v4/cmd/helm@v$HELM4_VERSION"
mv -f "$helm4_dir/helm" "$bin/helm4"
GOBIN="$bin" go install -trimpath -ldflags=-s "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
GOBIN="$bin" go install -trimpath -ldflags=-s "github.com/getsops/sops/v3/cmd/sops@v$SOPS_VERSION"
GOBIN="$bin" go install -trimpath -ldflags=-s "filippo.io/age/cmd/...@v$AGE_VERSION"
GOBIN="$bin" go install -trimpath -ldflags=-s "sigs.k8s.io/kustomize/kustomize/v5@v$KUSTOMIZE_VERSION"

# The module proxy here refuses ksops' module (403 for every version). Then .bin/ksops is the
# stand-in test/rig/ksops-shim.ts: ksops' generator contract over the real sops binary.
if GOBIN="$bin" go install -trimpath -ldflags=-s "github.com/viaduct-ai/kustomize-sops@$KSOPS_COMMIT" 2>"$bin/.ksops.err"; then
  mv -f "$bin/kustomize-sops" "$bin/ksops"
  rm -f "$bin/.ksops.err"
else
  echo "test-binaries: ksops' module cannot be installed here; using test/rig/ksops-shim.ts (real sops underneath)" >&2
  printf '#!/bin/sh\n# ksops stand-in: see test/rig/ksops-shim.ts\nSOPS_BIN="%s" exec "%s" "%s" "$@"\n' "$bin/sops" "$root/node_modules/.bin/node" "$root/test/rig/ksops-shim.ts" > "$bin/ksops"
  chmod +x "$bin/ksops"
fi

for b in "${required[@]}"; do
  [ -x "$bin/$b" ] || { echo "test-binaries: $b was not built" >&2; exit 1; }
done

echo "$stamp" > "$bin/.stamp"
echo "test binaries: built in $(( $(date +%s) - start )) s into $bin"
