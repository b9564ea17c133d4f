#!/usr/bin/env bash
# Create ./.venv with replengine installed (editable) and its test tools.
# Uses Debian's own python3 (/usr/bin/python3), as the packaged agent does, so that Pacemaker
# and ocf-tester (which runs meta-data as 'nobody') can execute the agent; installs
# python3-venv from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        python3-venv python3-pip >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
