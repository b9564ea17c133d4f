#!/usr/bin/env bash
# The main job: a 3-node resource (+ an async 4th) on this machine, a primary killed with
# SIGKILL, a log-diff failover, and the figures. Extra arguments go to `replctl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/replctl demo "$@"
