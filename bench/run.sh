#!/usr/bin/env bash
# Runs every benchmark of poolworker, beside Prefect's own worker where there is one, and writes
# bench/results/ (one Markdown table and one JSON file per benchmark, and summary.md, which also
# goes into the README). Sets up what it needs first: packages, the release build (with the fake
# servers), the Prefect virtualenv and, when a Docker engine runs, the test images.
#
#   bench/run.sh                 everything (about an hour on 2 cores)
#   bench/run.sh --quick         fewer rounds and smaller counts, to check that it all works
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
fi

.ci/install-deps
# The scale benchmark counts system calls with strace; nothing else needs it.
if ! command -v strace > /dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get install -y -qq --no-install-recommends strace
fi
.ci/build release
tests/e2e/setup_venv.sh
bench/setup_prefect_worker.sh
venv="${POOLWORKER_VENV:-$repo/.cache/venv}"
py="$venv/bin/python"
out="${POOLWORKER_BENCH_OUT:-$repo/bench/results}"
mkdir -p "$out"
export POOLWORKER_BIN="$repo/build/bin/poolworker"

step() { printf '\n==== %s\n' "$*"; }
# A benchmark that fails does not throw away the others: the run goes on, the summary keeps the
# tables that were written (each dated), and the run ends with the failed steps and exit 1.
failed=()
bench() {
  local name="$1"
  shift
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "bench/run.sh: $name failed (exit $rc)" >&2
    failed+=("$name")
  fi
}

if [ "$quick" -eq 1 ]; then
  step "idle and start-up"
  bench idle_startup "$py" bench/idle_startup.py --rounds 1 --out "$out"
  step "dispatch on the real server"
  bench dispatch "$py" bench/dispatch.py --rounds 1 --runs 50 --in-flight 10 --out "$out"
  step "scale against the fake Prefect API"
  bench scale "$py" bench/scale.py --runs 300 --rounds 1 --strace-runs 50 --out "$out"
  step "growth with runs in flight"
  bench growth "$py" bench/growth.py --counts 10,100 --series kubernetes-stream,docker-stream --out "$out"
else
  step "idle and start-up"
  bench idle_startup "$py" bench/idle_startup.py --rounds 2 --out "$out"
  step "dispatch on the real server"
  bench dispatch "$py" bench/dispatch.py --rounds 1 --out "$out"
  step "scale against the fake Prefect API"
  bench scale "$py" bench/scale.py --out "$out"
  step "growth with runs in flight"
  # The Docker series stops at 1,000 to keep the whole run near an hour (10,000 with the fake
  # engine has not been measured yet).
  bench growth "$py" bench/growth.py --counts 10,100,1000,10000 --docker-counts 10,100,1000 --out "$out"
fi

if [ -S /var/run/docker.sock ]; then
  step "Docker: claim to container start"
  tests/docker/build-test-images.sh
  bench docker_claim_to_start "$py" bench/docker_claim_to_start.py --runs "$([ "$quick" -eq 1 ] && echo 2 || echo 5)" --out "$out"
fi

step "summary"
"$py" bench/report.py --out "$out"

if [ ${#failed[@]} -gt 0 ]; then
  echo "bench/run.sh: failed: ${failed[*]} (their tables above are from an earlier run, if any)" >&2
  exit 1
fi
