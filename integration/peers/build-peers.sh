#!/usr/bin/env bash
# Provides the third-party test peers the end-to-end tests run: kube-apiserver and kube-proxy built
# from the Go module k8s.io/kubernetes at a pinned version, and etcd from Debian's etcd-server
# package (unpacked, never installed: no etcd service ever starts in the root namespace). Go is on
# the machine only for this. Output goes to a cache directory outside the repository, so later runs
# reuse it:
#
#   $KNP_PEERS_DIR (default /var/cache/kube-nftproxy/peers)/<k8s version>/{kube-apiserver,kube-proxy,etcd}
#
# Prints the directory holding the binaries on its last line. Safe to run concurrently (flock).
#
# Why replace lines: k8s.io/kubernetes's go.mod points its k8s.io/* staging modules at ./staging/...
# directories, which a module download does not resolve; each is pinned to the published v0.X.Y
# matching v1.X.Y.
#
# etcd: Debian 12's etcd-server is 3.4.23, older than the 3.5+ Kubernetes 1.34 documents, but this
# kube-apiserver accepts it (readyz ok, every end-to-end test passes on it). If the package cannot
# be downloaded, etcd is built from its Go modules instead (ETCD_VERSION).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.13}"
ROOT="${KNP_PEERS_DIR:-/var/cache/kube-nftproxy/peers}"
OUT="$ROOT/$K8S_VERSION"
JOBS="${JOBS:-2}"

have_all() { [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kube-proxy" ] && [ -x "$OUT/etcd" ]; }

if have_all; then echo "$OUT"; exit 0; fi

[ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "build-peers: 'go' not found; Go is needed to build kube-apiserver/etcd" >&2; exit 1; }
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9
if have_all; then echo "$OUT"; exit 0; fi

start=$(date +%s)
export GOFLAGS="-buildvcs=false -mod=mod" CGO_ENABLED=0 GOTOOLCHAIN=local
export GOPATH="${GOPATH:-$ROOT/gopath}"
# A build cache of our own, removed when the script ends: the peers are built once, and
# kube-apiserver's cache (~1.5 GiB) left in ~/.cache/go-build took disk the Rust build needs on
# a CI machine.
export GOCACHE="$ROOT/go-build.tmp"
trap 'rm -rf "$GOCACHE"' EXIT
work="$ROOT/src-$K8S_VERSION"
mkdir -p "$work" "$OUT.tmp"

# --- kube-apiserver and kube-proxy ---------------------------------------------------------------
minor="${K8S_VERSION#v1.}"           # 34.4
staging_version="v0.$minor"
gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$gomod" ] || { echo "build-peers: could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
goline=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
cd "$work"
cat > go.mod <<MOD
module knp-test-peers

go $goline

require k8s.io/kubernetes $K8S_VERSION
MOD
for m in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod"); do
  go mod edit -replace="$m=$m@$staging_version"
done
cat > peers.go <<'GO'
//go:build tools

package peers

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
)
GO
go mod tidy -e >/dev/null 2>&1 || true
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*} \
 -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
go build -p "$JOBS" -trimpath -ldflags "$ldflags" -o "$OUT.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -p "$JOBS" -trimpath -ldflags "$ldflags" -o "$OUT.tmp/kube-proxy" k8s.io/kubernetes/cmd/kube-proxy

# --- etcd: Debian's package, unpacked ------------------------------------------------------------
debs="$ROOT/debs"
mkdir -p "$debs"
get_deb() { (cd "$debs" && apt-get download -q etcd-server >/dev/null 2>&1); }
if get_deb || { apt-get update -qq >/dev/null 2>&1 && get_deb; }; then
  rm -rf "$debs/x" && dpkg-deb -x "$debs"/etcd-server_*.deb "$debs/x"
  cp "$debs/x/usr/bin/etcd" "$OUT.tmp/etcd"
  echo "build-peers: etcd $("$OUT.tmp/etcd" --version | head -1 | awk '{print $3}') from Debian's etcd-server" >&2
else
echo "build-peers: Debian's etcd-server not available; building etcd $ETCD_VERSION from Go modules" >&2
ework="$ROOT/src-etcd-$ETCD_VERSION"
mkdir -p "$ework"
cd "$ework"
cat > go.mod <<MOD
module knp-test-etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
cat > peers.go <<'GO'
//go:build tools

package peers

import _ "go.etcd.io/etcd/server/v3/etcdmain"
GO
go mod tidy -e >/dev/null 2>&1 || true
go build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$OUT.tmp/etcd" go.etcd.io/etcd/server/v3
fi

rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "build-peers: kube-apiserver and kube-proxy $K8S_VERSION, and etcd, ready in $(( $(date +%s) - start )) s" >&2
echo "$OUT"
