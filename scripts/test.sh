#!/usr/bin/env bash
# Install what the tests need and run them all: unit, multi-process (real daemons over
# ZeroMQ on loopback, kill -9), loop devices, and the Pacemaker cluster tests (real
# Pacemaker + Corosync in network namespaces), and the .deb/.rpm packages (built, linted,
# installed, run and purged: tests/packaging). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
if [ -x scripts/install-cluster-deps.sh ] || [ -f scripts/install-cluster-deps.sh ]; then
    bash scripts/install-cluster-deps.sh
fi
bash scripts/install-packaging-deps.sh  # tests/packaging: dpkg-buildpackage, rpmbuild, linters
.venv/bin/ruff check replengine tests bench
.venv/bin/ruff format --check replengine tests bench
.venv/bin/lint-imports
exec .venv/bin/python -m pytest -q "$@"
