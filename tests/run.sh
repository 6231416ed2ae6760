#!/usr/bin/env bash
# Runs every test of poolworker: unit and integration tests (also under ASan and UBSan), then
# the end-to-end tests against a real Prefect server. Installs what it needs first.
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
