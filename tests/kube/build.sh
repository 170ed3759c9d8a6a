#!/usr/bin/env bash
# Builds the real Kubernetes servers the tests in tests/kube start: kube-apiserver and
# kube-controller-manager from k8s.io/kubernetes, etcd from go.etcd.io/etcd, through the Go
# module proxy.  The output goes to a cache outside the checkout, keyed by the versions, so a
# rebuild only happens when they change:  $COZYBACKUP_KUBE_CACHE (default ~/.cache/cozybackup-kube)
# /<k8s>-<etcd>/bin.  Prints that bin directory.  A fresh machine pays ~17 minutes on 2 cores.
set -euo pipefail

K8S=${COZYBACKUP_K8S_VERSION:-v1.37.2}
ETCD=${COZYBACKUP_ETCD_VERSION:-v3.6.16}
# The staging modules (k8s.io/api, k8s.io/apiserver, ...) are published as v0.<minor>.<patch>.
STG=v0.${K8S#v1.}
ROOT=${COZYBACKUP_KUBE_CACHE:-$HOME/.cache/cozybackup-kube}
W=$ROOT/$K8S-$ETCD
BIN=$W/bin

if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/etcd" ]; then
  echo "$BIN"; exit 0
fi
command -v go >/dev/null 2>&1 || { echo "go is not installed: install Go 1.26 to build the Kubernetes test servers" >&2; exit 3; }

mkdir -p "$W/mod" "$W/etcd" "$BIN"
log() { printf '%s  %s\n' "$(date +%T)" "$*" >&2; }

# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local
# paths; replace directives only apply in the main module, so a wrapper module replaces
# each one with its published release instead.
cd "$W/mod"
[ -f go.mod ] || go mod init local/kubetest >/dev/null 2>&1
GOMOD=$(go mod download -json "k8s.io/kubernetes@$K8S" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9.-]*\) => \./staging/.*#\1#p' "$GOMOD"); do
  go mod edit -replace="$m=$m@$STG"
done
log "resolving k8s.io/kubernetes $K8S"
go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$K8S" "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S" >&2
MINOR=${K8S#v1.}; MINOR=${MINOR%%.*}
LD="-s -w -X k8s.io/component-base/version.gitVersion=$K8S -X k8s.io/component-base/version.gitMajor=1
 -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/client-go/pkg/version.gitVersion=$K8S"
for cmd in kube-apiserver kube-controller-manager; do
  if [ ! -x "$BIN/$cmd" ]; then
    log "building $cmd (minutes on a cold cache)"
    go build -trimpath -ldflags="$LD" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  fi
done

cd "$W/etcd"
if [ ! -f go.mod ]; then
  go mod init local/etcd >/dev/null 2>&1
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > main.go
fi
if [ ! -x "$BIN/etcd" ]; then
  log "building etcd $ETCD"
  go get "go.etcd.io/etcd/server/v3@$ETCD" >&2
  go mod tidy >&2
  go build -trimpath -ldflags="-s -w" -o "$BIN/etcd.tmp" .
  mv "$BIN/etcd.tmp" "$BIN/etcd"
fi
echo "$BIN"
