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
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
# The packages are installed and purged for real: run them on their own, before the cluster
# tests (whose session-long cluster keeps its copy of the agent where the package puts it)
.venv/bin/python -m pytest -q tests/packaging
exec .venv/bin/python -m pytest -q --ignore=tests/packaging
