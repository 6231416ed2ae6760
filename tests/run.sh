#!/usr/bin/env bash
# Runs every test of poolworker: unit and integration tests (also under ASan and UBSan), then
# the end-to-end tests against a real Prefect server (and the Docker engine, when there is one).
# Installs what it needs first, and builds the Docker test images when there is an engine.
#
#   tests/run.sh              everything
#   tests/run.sh --quick      unit and integration tests of the release build only
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
fi

step() { printf '\n==== %s\n' "$*"; }

step "dependencies"
.ci/install-deps

# The Docker tests run against this machine's engine with images built here (no registry).
# Where the engine's socket exists they must run: POOLWORKER_REQUIRE_DOCKER=1 turns their
# "no engine" or "no image" skip into a failure.
if [ -S /var/run/docker.sock ]; then
  step "Docker test images"
  tests/docker/build-test-images.sh
  export POOLWORKER_REQUIRE_DOCKER=1
else
  echo "no Docker engine socket at /var/run/docker.sock: the Docker tests will be skipped"
fi

step "build (release)"
.ci/build release

step "unit and integration tests (release)"
ctest --test-dir build --output-on-failure

if [ "$quick" -eq 1 ]; then
  exit 0
fi

step "deb package: build, install, verify the systemd units, remove"
tests/packaging/test_deb.sh build

step "build (ASan + UBSan)"
.ci/build asan

step "unit and integration tests (ASan + UBSan)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure

step "end-to-end tests against a real Prefect server"
POOLWORKER_BIN="$PWD/build/bin/poolworker" tests/e2e/run.sh

step "all tests passed"
