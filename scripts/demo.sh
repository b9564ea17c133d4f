#!/usr/bin/env bash
# The main job: a 3-node resource (+ an async 4th) on this machine, an ext4 file system on
# the primary's device, the primary killed with SIGKILL, a log-diff failover, the same files
# read back on the new primary, and the figures. Extra arguments go to `replctl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
bash scripts/start-udevd.sh  # the stable name /dev/replengine/r0
exec .venv/bin/replctl demo "$@"
