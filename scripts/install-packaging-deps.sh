#!/bin/bash
# install-packaging-deps.sh - install what building and checking the packages needs
# (tests/packaging): debhelper, dh-python and pybuild-plugin-pyproject for the .debs, rpm and
# rpmlint for the RPM, lintian. Idempotent, like install-cluster-deps.sh: does nothing when
# every package is installed, runs `apt-get update` only when apt cannot provide one.
set -euo pipefail

PKGS=(build-essential fakeroot debhelper dh-python pybuild-plugin-pyproject python3-all
    python3-setuptools python3-wheel rpm rpmlint lintian)

if [ "$(id -u)" != 0 ]; then
    echo "install-packaging-deps: must run as root" >&2
    exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-packaging-deps: all present"
    exit 0
fi
echo "install-packaging-deps: missing: ${missing[*]}"

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o DPkg::Lock::Timeout=600)
for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/{print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        apt-get "${APT_OPTS[@]}" update
        break
    fi
done
apt-get install -y -q --no-install-recommends "${APT_OPTS[@]}" "${missing[@]}"
echo "install-packaging-deps: installed ${missing[*]}"
