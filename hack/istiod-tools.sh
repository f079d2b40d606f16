#!/usr/bin/env bash
# Builds istiod (pilot-discovery) from the Go module proxy into a cache
# outside the repository, for the extension-mode tests that run peerd beside a
# real istiod (test/istio). Prints the cache directory on stdout.
#
# The build is skipped when the cache already holds the binary for this
# version, so running this again is cheap. A cold build takes about 25 minutes
# on two busy cores. Override the cache with PEERD_ISTIO_TOOLS, the version
# with ISTIO_VERSION (istio.io/istio publishes only pseudo-versions; this is
# the 1.31 line that test/istio also requires).
#
# Why a throwaway module: pilot-discovery is a main package of istio.io/istio,
# which has no replace directives, so a module that requires it and imports the
# command from a tools file resolves all of istiod's dependencies; building it
# inside the repository would pull them into peerd's go.sum.
set -euo pipefail

ISTIO_VERSION="${ISTIO_VERSION:-v0.0.0-20260827124520-eed52ebb66ad}"
TOOLS_DIR="${PEERD_ISTIO_TOOLS:-$HOME/.cache/peerd/istio-tools}"

log() { echo "istiod-tools: $*" >&2; }

mkdir -p "$TOOLS_DIR"
TOOLS_DIR="$(cd "$TOOLS_DIR" && pwd)"

export GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=mod"

out="$TOOLS_DIR/pilot-discovery"
if [[ -x "$out" && -f "$out.version" && "$(cat "$out.version")" == "$ISTIO_VERSION" ]]; then
  log "pilot-discovery $ISTIO_VERSION already in $TOOLS_DIR"
  echo "$TOOLS_DIR"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "building pilot-discovery $ISTIO_VERSION in $work"
start=$SECONDS
(
  cd "$work"
  go mod init peerd.local/istio-tools >/dev/null 2>&1
  cat >tools.go <<'GO'
//go:build tools

package tools

import _ "istio.io/istio/pilot/cmd/pilot-discovery"
GO
  go get "istio.io/istio@$ISTIO_VERSION" >&2
  go mod tidy >&2
  go build -trimpath -o "$out.tmp" istio.io/istio/pilot/cmd/pilot-discovery
)
mv "$out.tmp" "$out"
echo "$ISTIO_VERSION" >"$out.version"
log "pilot-discovery built in $((SECONDS - start))s"
echo "$TOOLS_DIR"
