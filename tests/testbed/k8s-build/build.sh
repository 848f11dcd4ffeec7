#!/usr/bin/env bash
# Build the real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) and kwok from the Go module proxy into a cache directory outside the work tree.
# Idempotent: does nothing when every binary is already there.
#
#   AF_K8S_CACHE   where binaries go (default ~/.cache/jupyterhub-af/k8s-$K8S_VERSION)
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-1.34.4}
ETCD_VERSION=${ETCD_VERSION:-3.6.4}
KWOK_VERSION=${KWOK_VERSION:-0.7.0}
CACHE=${AF_K8S_CACHE:-$HOME/.cache/jupyterhub-af/k8s-$K8S_VERSION}
BIN=$CACHE/bin
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
missing=()
for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "k8s test bed: cached in $BIN"; exit 0; fi
echo "k8s test bed: building ${missing[*]} into $BIN (cold build takes 15-30 min on 2 cores)"
mkdir -p "$BIN" "$CACHE/src"
start=$(date +%s)

# --- control plane: one wrapper module requiring k8s.io/kubernetes with staging replaces ---
cp_src=$CACHE/src/controlplane
rm -rf "$cp_src"; mkdir -p "$cp_src"
cp -r "$here/controlplane/." "$cp_src/"
{
  echo "module af.local/controlplane"
  echo
  echo "go 1.24.0"
  echo
  echo "require k8s.io/kubernetes v$K8S_VERSION"
  echo
  echo "replace ("
  while read -r m; do
    [ -n "$m" ] && echo "	k8s.io/$m => k8s.io/$m v0.${K8S_VERSION#1.}"
  done < "$here/staging-modules.txt"
  echo ")"
} > "$cp_src/go.mod"
( cd "$cp_src" && go mod tidy && \
  go build -ldflags='-s -w' -o "$BIN/" ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler )
echo "control plane built after $(( $(date +%s) - start ))s"

# --- etcd: its own wrapper module (its dependency graph differs from Kubernetes') ---
if [ ! -x "$BIN/etcd" ]; then
  e_src=$CACHE/src/etcd
  rm -rf "$e_src"; mkdir -p "$e_src"
  cp "$here/etcd/main.go" "$e_src/"
  printf 'module af.local/etcd\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" > "$e_src/go.mod"
  ( cd "$e_src" && go mod tidy && go build -ldflags='-s -w' -o "$BIN/etcd" . )
  echo "etcd built after $(( $(date +%s) - start ))s"
fi

# --- kwok ---
if [ ! -x "$BIN/kwok" ]; then
  GOBIN=$BIN go install -ldflags='-s -w' "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  echo "kwok built after $(( $(date +%s) - start ))s"
fi
for b in "${want[@]}"; do [ -x "$BIN/$b" ] || { echo "missing $BIN/$b after build" >&2; exit 1; }; done
echo "k8s test bed: built in $(( $(date +%s) - start ))s -> $BIN"
