#!/usr/bin/env bash
# Create ./.venv with replengine installed (editable) and its test tools; an argument names
# the extras instead (bench-report.sh: test,bench).
# Uses Debian's own python3 (/usr/bin/python3), as the packaged agent does, so that Pacemaker
# and ocf-tester (which runs meta-data as 'nobody') can execute the agent; installs
# python3-venv from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
# python3-venv for the venv; fuse3, libfuse3-dev and pkg-config to build pyfuse3 (the block
# device frontend) from PyPI; iproute2 and nftables for the fault campaign's network
# namespaces (tests/faults: partitions, packet loss)
need=()
"$PY" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv python3-pip)
for p in fuse3 libfuse3-dev pkg-config iproute2 nftables; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    cand=$(apt-cache policy "${need[0]}" 2>/dev/null | awk '/Candidate:/{print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then apt-get update -qq; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        "${need[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# compat: the tree goes on sys.path through a plain .pth line. The default (strict) mode
# installs an import finder that every Python start imports: ~10-15 ms of each `replctl`
# and daemon start here, which an installed package (the .deb) does not pay
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${1:-test}]" \
    --config-settings editable_mode=compat
# Bytecode for the tree, as an installed package has it (py3compile at install): with
# PYTHONDONTWRITEBYTECODE set (this machine kind sets it), every replctl and daemon start would
# otherwise compile the modules from source, ~60 ms of each start (a rejoin waits for it)
.venv/bin/python -m compileall -q replengine
