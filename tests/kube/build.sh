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
command -v go >/dev/null 2>&1 || { echo "go is not installed: the real Kubernetes API server tests need Go 1.26 (https://go.dev/dl/)" >&2; exit 3; }

mkdir -p "$W/mod" "$W/etcd" "$BIN"
# Progress goes to stderr, one timestamped line a step; what go itself prints (module
# downloads, "go: added ...", compiler errors) goes to this log, whose end is shown on failure.
LOG=$W/build.log
printf '\n== %s  build.sh %s %s\n' "$(date -u +%FT%TZ)" "$K8S" "$ETCD" >>"$LOG"
log() { printf '%s  %s\n' "$(date +%T)" "$*" >&2; }
fail() { echo "build.sh: $1 failed; the end of $LOG:" >&2; tail -n 40 "$LOG" >&2; exit 1; }
quiet() { "$@" >>"$LOG" 2>&1 || fail "'$*'"; }
log "go output goes to $LOG"

# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local
# paths; replace directives only apply in the main module, so a wrapper module replaces
# each one with its published release instead.
cd "$W/mod"
[ -f go.mod ] || quiet go mod init local/kubetest
log "downloading k8s.io/kubernetes $K8S"
INFO=$(go mod download -json "k8s.io/kubernetes@$K8S" 2>>"$LOG") || fail "go mod download k8s.io/kubernetes@$K8S"
GOMOD=$(printf '%s' "$INFO" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9.-]*\) => \./staging/.*#\1#p' "$GOMOD"); do
  quiet go mod edit -replace="$m=$m@$STG"
done
log "resolving k8s.io/kubernetes $K8S"
quiet go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$K8S" "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S"
MINOR=${K8S#v1.}; MINOR=${MINOR%%.*}
LD="-s -w -X k8s.io/component-base/version.gitVersion=$K8S -X k8s.io/component-base/version.gitMajor=1
 -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/client-go/pkg/version.gitVersion=$K8S"
for cmd in kube-apiserver kube-controller-manager; do
  if [ ! -x "$BIN/$cmd" ]; then
    log "building $cmd (minutes on a cold cache)"
    quiet go build -trimpath -ldflags="$LD" -o "$BIN/$cmd.tmp.$$" "k8s.io/kubernetes/cmd/$cmd"
    mv "$BIN/$cmd.tmp.$$" "$BIN/$cmd"
  fi
done

cd "$W/etcd"
if [ ! -f go.mod ]; then
  quiet go mod init local/etcd
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > main.go
fi
if [ ! -x "$BIN/etcd" ]; then
  log "building etcd $ETCD"
  quiet go get "go.etcd.io/etcd/server/v3@$ETCD"
  quiet go mod tidy
  quiet go build -trimpath -ldflags="-s -w" -o "$BIN/etcd.tmp.$$" .
  mv "$BIN/etcd.tmp.$$" "$BIN/etcd"
fi
log "done: $BIN"
echo "$BIN"
