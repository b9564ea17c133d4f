#!/usr/bin/env bash
# Run every benchmark and write docs/benchmarks.md (+ PNG plots): bench/report.py.
# Installs what the benchmarks need (the venv with matplotlib; fio from Debian for the
# device benchmark). Run as root on a quiet machine. Arguments go to bench/report.py
# (--quick for a short run, --only NAME...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test,bench
if ! command -v fio >/dev/null; then
    cand=$(apt-cache policy fio 2>/dev/null | awk '/Candidate:/{print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then apt-get update -qq; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 fio >/dev/null
fi
exec .venv/bin/python bench/report.py "$@"
