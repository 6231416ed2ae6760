#!/usr/bin/env bash
# Creates the virtualenv of the end-to-end tests, if needed, and installs requirements.txt into
# it under the pins of constraints.txt. Idempotent: with unchanged requirements, constraints and
# interpreter, a second run does nothing.
#
#   POOLWORKER_VENV     where the virtualenv lives (default: <repo>/.cache/venv)
#   POOLWORKER_PYTHON   the interpreter that creates it (default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${POOLWORKER_VENV:-$repo/.cache/venv}"
python="${POOLWORKER_PYTHON:-python3}"
requirements="$here/requirements.txt"
constraints="$here/constraints.txt"
stamp="$venv/.poolworker-e2e-stamp"

want="$( (cat "$requirements" "$constraints"; "$python" --version 2>&1) | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup_venv: creating virtualenv $venv" >&2
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi

echo "setup_venv: installing $requirements into $venv" >&2
"$venv/bin/python" -m pip install --quiet -r "$requirements" -c "$constraints"
# Importing the server's API catches dependency releases that break `prefect server start`.
"$venv/bin/python" -c 'import pytest, prefect.server.api.server, prefect.workers.process, prefect_docker.worker'
echo "$want" >"$stamp"
echo "setup_venv: ready, prefect $("$venv/bin/python" -c 'import prefect; print(prefect.__version__)')" >&2
