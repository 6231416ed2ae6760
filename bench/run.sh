#!/usr/bin/env bash
# Runs the benchmarks of poolworker beside Prefect's own worker and writes bench/results/
# (Markdown tables and raw JSON). Builds poolworker and the Prefect virtualenv first.
#
#   bench/run.sh                       everything, default rounds
#   bench/run.sh --rounds 5 --idle-seconds 60
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
.ci/install-deps
.ci/build release
tests/e2e/setup_venv.sh
venv="${POOLWORKER_VENV:-$repo/.cache/venv}"
exec "$venv/bin/python" bench/idle_startup.py "$@"
