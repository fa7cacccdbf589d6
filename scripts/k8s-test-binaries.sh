#!/usr/bin/env bash
# Builds kube-apiserver and etcd from Go modules for the Kubernetes driver's tests,
# into a cache outside the repo; skips when both binaries are already there.
#
#   OPENSHELL_K8S_CACHE   where the binaries go (default /var/cache/openshell-test/k8s)
#   OPENSHELL_K8S_STRICT  1: a failed build fails this script (default: warn, the tests skip
#                         with a printed reason)
#
# kube-apiserver: a wrapper module requiring k8s.io/kubernetes at one release, with a
# replace line for every staging module (k8s.io/<name> v0.<minor>.<patch>), generated
# from that release's own go.mod. etcd: a wrapper main calling etcdmain.Main.
# Never commit the binaries.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CACHE=${OPENSHELL_K8S_CACHE:-/var/cache/openshell-test/k8s}
BIN=$CACHE/bin
have() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]; }

if have kube-apiserver "$K8S_VERSION" && have etcd "$ETCD_VERSION"; then
  exit 0
fi

fail() {
  echo "k8s-test-binaries: $*" >&2
  if [ "${OPENSHELL_K8S_STRICT:-0}" = 1 ]; then exit 1; fi
  echo "k8s-test-binaries: the Kubernetes driver tests will skip (they print why)" >&2
  exit 0
}

command -v go >/dev/null 2>&1 || fail "no go on PATH: cannot build kube-apiserver and etcd"
mkdir -p "$BIN" "$CACHE/src" || fail "cannot create $CACHE"

# One build at a time (two test jobs or a second npm test may start this at once).
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
if have kube-apiserver "$K8S_VERSION" && have etcd "$ETCD_VERSION"; then
  exit 0
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath"
ldflags="-s -w"
started=$(date +%s)
echo "k8s-test-binaries: building kube-apiserver $K8S_VERSION and etcd $ETCD_VERSION into $BIN (first run only; 10-30 min on 2 cores)" >&2

# --- etcd --------------------------------------------------------------------------
if ! have etcd "$ETCD_VERSION"; then
  d=$CACHE/src/etcd-$ETCD_VERSION
  mkdir -p "$d"
  cat >"$d/main.go" <<'EOF'
// Wrapper main for etcd's server, so it builds from the Go module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (
    cd "$d"
    [ -f go.mod ] || go mod init openshell.test/etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy
    nice -n 10 go build -ldflags "$ldflags" -o "$BIN/etcd.tmp" .
    mv "$BIN/etcd.tmp" "$BIN/etcd"
    echo "$ETCD_VERSION" >"$BIN/.etcd.version"
  ) || fail "building etcd $ETCD_VERSION failed (see the lines above)"
fi

# --- kube-apiserver ----------------------------------------------------------------
if ! have kube-apiserver "$K8S_VERSION"; then
  d=$CACHE/src/kube-apiserver-$K8S_VERSION
  mkdir -p "$d"
  staging_version="v0.${K8S_VERSION#v1.}"
  (
    cd "$d"
    modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -n "$modfile" ] && [ -f "$modfile" ] || { echo "no go.mod for k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
    gover=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$modfile")
    {
      echo "module openshell.test/kube-apiserver"
      echo
      echo "go $gover"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      # every "k8s.io/<m> => ./staging/src/k8s.io/<m>" of the release's go.mod
      sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/src/.*#\1#p' "$modfile" | sort -u |
        while read -r m; do echo "	$m => $m $staging_version"; done
      echo ")"
    } >go.mod
    n=$(grep -c "=> k8s.io/" go.mod || true)
    [ "$n" -gt 10 ] || { echo "only $n staging replaces generated from $modfile" >&2; exit 1; }
    cat >tools.go <<'EOF'
//go:build tools

// Keeps the build's module graph; the binary is built with go build k8s.io/kubernetes/cmd/kube-apiserver.
package tools
EOF
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION"
    v=k8s.io/component-base/version
    nice -n 10 go build -ldflags "$ldflags -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)" \
      -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
    echo "$K8S_VERSION" >"$BIN/.kube-apiserver.version"
  ) || fail "building kube-apiserver $K8S_VERSION failed (see the lines above)"
fi

echo "k8s-test-binaries: done in $(( $(date +%s) - started )) s: $("$BIN/kube-apiserver" --version 2>/dev/null || true), etcd $ETCD_VERSION" >&2
