#!/bin/bash
# install-cluster-deps.sh - install what the cluster test harness (tests/cluster) needs:
# Pacemaker, Corosync, pcs, resource-agents (ocf:pacemaker:Stateful lives in pacemaker)
# and fence-agents (for /usr/share/fence/fencing.py); prometheus for promtool (the metrics
# endpoint's exposition and the example alert rules are checked with it). Idempotent: does nothing when
# every package is already installed; runs `apt-get update` only when a package is
# missing and apt has no package lists (or they cannot provide the package).
set -euo pipefail

PKGS=(pacemaker pacemaker-cli-utils corosync pcs resource-agents fence-agents libxml2-utils postgresql prometheus)

if [ "$(id -u)" != 0 ]; then
    echo "install-cluster-deps: must run as root" >&2
    exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-cluster-deps: all present (${PKGS[*]})"
    exit 0
fi
echo "install-cluster-deps: missing: ${missing[*]}"

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o DPkg::Lock::Timeout=600)

# apt-get update only if the package lists cannot provide every missing package
need_update=0
for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/{print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        need_update=1
        break
    fi
done
if [ "$need_update" = 1 ]; then
    echo "install-cluster-deps: apt-get update"
    apt-get "${APT_OPTS[@]}" update
fi

apt-get install -y "${APT_OPTS[@]}" "${missing[@]}"
echo "install-cluster-deps: installed ${missing[*]}"
