#!/usr/bin/env bash
# Runs the end-to-end tests against a real Prefect server, after making sure their virtualenv
# exists (setup_venv.sh). Extra arguments go to pytest; the exit code is pytest's.
#
#   tests/e2e/run.sh                                   against build/bin/poolworker
#   POOLWORKER_BIN=/path/to/poolworker tests/e2e/run.sh -k cancel
#   POOLWORKER_E2E_WORKER=prefect tests/e2e/run.sh     against Prefect's own worker
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${POOLWORKER_VENV:-$repo/.cache/venv}"

"$here/setup_venv.sh"

cd "$here"
set +e
"$venv/bin/python" -m pytest "$here" "$@"
status=$?
set -e
exit "$status"
