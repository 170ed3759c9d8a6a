#!/usr/bin/env bash
# Set-up and entry points on a fresh machine:  ./dev.sh demo  |  ./dev.sh test
# Installs what is missing (uv, nox, Debian packages the tests use), then runs nox.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages the driver tests start real servers from (prometheus: promtool checks
# the alerting rules).
APT_PACKAGES="postgresql postgresql-contrib mariadb-server mariadb-client mariadb-backup
  clickhouse-server clickhouse-client etcd-server etcd-client sqlite3 qemu-utils
  prometheus pgbackrest borgbackup restic ${COZYBACKUP_APT_PACKAGES:-}"

need_apt=()
for pkg in $APT_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own servers on 127.0.0.1; no system service may start on install.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" </dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

if ! command -v uv >/dev/null 2>&1 || ! command -v nox >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check uv 'nox>=2024.10' </dev/null
  hash -r
fi

# pyenv (as on these machines) hides every Python but the global one: expose them all so
# nox can run the tests on each supported version that is installed.
if command -v pyenv >/dev/null 2>&1 && [ -z "${PYENV_VERSION:-}" ]; then
  global=$(pyenv version-name 2>/dev/null || true)
  others=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[0-9]+\.[0-9]+$' | grep -vx "$global" | sort -V | tr '\n' ':')
  PYENV_VERSION="${global:+$global:}${others%:}"
  export PYENV_VERSION
fi

export UV_PYTHON_DOWNLOADS=never  # only registries are reachable: use the machine's Pythons

case "${1:-}" in
  demo) shift; exec nox -s demo -- "$@" ;;
  test) shift; exec nox -s tests drivers lint typecheck kube "$@" ;;
  *) echo "usage: ./dev.sh demo | ./dev.sh test [nox args]" >&2; exit 2 ;;
esac
