#!/usr/bin/env bash
# Builds the real Kubernetes control-plane binaries that the kube harness
# (test/kube) runs: kube-apiserver and etcd, from the Go module proxy, into a
# cache outside the repository. Prints the cache directory on stdout.
#
# The build is skipped for a binary that is already in the cache, so running
# this again is cheap. Override the cache with PEERD_KUBE_TOOLS, the versions
# with KUBE_VERSION / ETCD_VERSION.
#
# Why a throwaway module: k8s.io/kubernetes is not meant to be required. Its
# go.mod requires every staging module (k8s.io/api, k8s.io/client-go, ...) at
# v0.0.0 and replaces them with ./staging paths that only exist in its own
# repository. A module that requires it must replace each of those with the
# published staging release (v0.<minor>.<patch>). etcd's server module cannot
# be built with `go install pkg@version` because its go.mod has replace
# directives, so it gets the same treatment without the replaces.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
TOOLS_DIR="${PEERD_KUBE_TOOLS:-$HOME/.cache/peerd/kube-tools}"

log() { echo "kube-tools: $*" >&2; }

mkdir -p "$TOOLS_DIR"
TOOLS_DIR="$(cd "$TOOLS_DIR" && pwd)"

# Work outside any enclosing module, and never let a go.work interfere.
export GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=mod"

build_etcd() {
  local out="$TOOLS_DIR/etcd"
  if [[ -x "$out" && -f "$out.version" && "$(cat "$out.version")" == "$ETCD_VERSION" ]]; then
    log "etcd $ETCD_VERSION already in $TOOLS_DIR"
    return
  fi
  local work
  work="$(mktemp -d)"
  log "building etcd $ETCD_VERSION in $work"
  local start=$SECONDS
  (
    cd "$work"
    go mod init peerd.local/etcd-tools >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
    go build -trimpath -o "$out.tmp" go.etcd.io/etcd/server/v3
  )
  mv "$out.tmp" "$out"
  echo "$ETCD_VERSION" >"$out.version"
  rm -rf "$work"
  log "etcd built in $((SECONDS - start))s"
}

build_apiserver() {
  local out="$TOOLS_DIR/kube-apiserver"
  if [[ -x "$out" && -f "$out.version" && "$(cat "$out.version")" == "$KUBE_VERSION" ]]; then
    log "kube-apiserver $KUBE_VERSION already in $TOOLS_DIR"
    return
  fi
  local staging_version="v0.${KUBE_VERSION#v1.}"
  local work gomod
  work="$(mktemp -d)"
  log "building kube-apiserver $KUBE_VERSION (staging $staging_version) in $work"
  local start=$SECONDS
  gomod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  if [[ -z "$gomod" || ! -f "$gomod" ]]; then
    log "cannot find go.mod of k8s.io/kubernetes@$KUBE_VERSION"
    exit 1
  fi
  # Every module that kubernetes' own go.mod replaces with a ./staging path.
  local staging
  staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod")"
  if [[ -z "$staging" ]]; then
    log "no staging replaces found in $gomod"
    exit 1
  fi
  (
    cd "$work"
    {
      echo "module peerd.local/kube-tools"
      echo
      echo "go $(sed -n 's/^go \([0-9.]*\).*/\1/p' "$gomod")"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      for m in $staging; do
        echo "replace $m => $m $staging_version"
      done
    } >go.mod
    echo 'package tools' >tools.go
    go mod download k8s.io/kubernetes >&2
    go build -trimpath -o "$out.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  )
  mv "$out.tmp" "$out"
  echo "$KUBE_VERSION" >"$out.version"
  rm -rf "$work"
  log "kube-apiserver built in $((SECONDS - start))s"
}

build_etcd
build_apiserver
echo "$TOOLS_DIR"
