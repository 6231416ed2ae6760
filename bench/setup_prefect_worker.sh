#!/usr/bin/env bash
# Creates the virtualenv that runs Prefect's own worker in the benchmarks: Prefect alone (see
# requirements-prefect-worker.txt). Idempotent. Prints nothing when it is already there.
#   POOLWORKER_PREFECT_WORKER_VENV   where it lives (default: <repo>/.cache/venv-prefect-worker)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POOLWORKER_PREFECT_WORKER_VENV:-$repo/.cache/venv-prefect-worker}"
requirements="$repo/bench/requirements-prefect-worker.txt"
constraints="$repo/tests/e2e/constraints.txt"
stamp="$venv/.poolworker-bench-stamp"
want="$( (cat "$requirements" "$constraints"; python3 --version 2>&1) | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/prefect" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup_prefect_worker: installing Prefect alone into $venv" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet -r "$requirements" -c "$constraints"
"$venv/bin/python" -c 'import prefect.workers.process'
echo "$want" >"$stamp"
