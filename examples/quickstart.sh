#!/usr/bin/env bash
# From a fresh Debian 12 machine to a flow run COMPLETED through poolworker:
#   1. installs the build dependencies (Debian packages) and builds poolworker,
#   2. creates a virtualenv with Prefect (the version the tests pin),
#   3. starts a local Prefect server (SQLite, in a temporary PREFECT_HOME),
#   4. starts `poolworker start --pool quickstart --type process`, which creates the pool,
#   5. deploys examples/flows/hello.py with Prefect's own `flow.from_source(...).deploy(...)`,
#   6. runs it with `prefect deployment run --watch` and shows its final state and logs.
# Everything it starts is stopped when it exits. Run it from anywhere:  examples/quickstart.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${POOLWORKER_VENV:-$repo/.cache/venv}"
pool="${POOLWORKER_QUICKSTART_POOL:-quickstart}"

say() { printf '\n==> %s\n' "$*"; }

say "installing dependencies and building poolworker"
.ci/install-deps
.ci/build release

say "preparing a virtualenv with Prefect"
tests/e2e/setup_venv.sh

work="$(mktemp -d -t poolworker-quickstart-XXXXXX)"
server_pid=""
worker_pid=""
cleanup() {
  if [ -n "$worker_pid" ]; then kill -TERM "$worker_pid" 2>/dev/null || true; wait "$worker_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
# Only this script's settings: nothing from the machine's own Prefect profile.
for var in $(env | sed -n 's/^\(PREFECT_[A-Z0-9_]*\)=.*/\1/p'); do unset "$var"; done
export PREFECT_HOME="$work/prefect-home"
export PREFECT_API_URL="http://127.0.0.1:$port/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_UI_ENABLED=false
export PATH="$venv/bin:$PATH"

say "starting a Prefect server at $PREFECT_API_URL (log: $work/server.log)"
prefect server start --host 127.0.0.1 --port "$port" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 180); do
  if curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then cat "$work/server.log"; echo "the Prefect server did not start" >&2; exit 1; fi
  sleep 1
done
curl -fsS "$PREFECT_API_URL/health" >/dev/null

say "starting: poolworker start --pool $pool --type process"
build/bin/poolworker start --pool "$pool" --type process >"$work/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 1 60); do
  if prefect work-pool inspect "$pool" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$worker_pid" 2>/dev/null; then cat "$work/worker.log"; echo "poolworker exited" >&2; exit 1; fi
  sleep 1
done

say "deploying examples/flows/hello.py to the pool"
python examples/deploy_hello.py "$pool"

say "running the deployment: prefect deployment run hello/quickstart --watch"
set +e
prefect deployment run hello/quickstart --watch --watch-timeout 300
status=$?
set -e

say "poolworker's log"
cat "$work/worker.log"
if [ "$status" -ne 0 ]; then
  echo "the flow run did not complete (exit $status)" >&2
  exit "$status"
fi
say "done: the flow run above was claimed and run by poolworker, and ended COMPLETED"
