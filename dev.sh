#!/usr/bin/env bash
# Set-up and entry points on a fresh machine:  ./dev.sh demo  |  ./dev.sh test
# Installs what is missing (uv, nox, Debian packages the tests use), then runs nox.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
for pkg in ${COZYBACKUP_APT_PACKAGES:-}; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" </dev/null
fi

if ! command -v uv >/dev/null 2>&1 || ! command -v nox >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check uv 'nox>=2024.10' </dev/null
  hash -r
fi

case "${1:-}" in
  demo) shift; exec nox -s demo -- "$@" ;;
  test) shift; exec nox -s tests drivers lint typecheck "$@" ;;
  *) echo "usage: ./dev.sh demo | ./dev.sh test [nox args]" >&2; exit 2 ;;
esac
