#!/usr/bin/env bash
# Builds the deb from the release build, installs it, checks what it installed, removes it.
#   tests/packaging/test_deb.sh [build-dir]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$repo/build}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

fail() { echo "test_deb: FAIL: $*" >&2; exit 1; }

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
(cd "$build" && cpack -G DEB -B "$out" > "$out/cpack.log") || { cat "$out/cpack.log"; fail "cpack"; }
deb="$(ls "$out"/poolworker_*.deb)"
echo "test_deb: built $(basename "$deb") ($(du -h "$deb" | cut -f1))"
dpkg-deb --info "$deb" | sed -n '/Depends/p'

$SUDO dpkg -i "$deb" > /dev/null
trap '$SUDO dpkg --purge poolworker > /dev/null 2>&1 || true; rm -rf "$out"' EXIT

version="$(/usr/bin/poolworker --version)"
echo "test_deb: installed: $version"
[[ "$version" == poolworker\ * ]] || fail "poolworker --version printed '$version'"
[ -x /usr/libexec/poolworker/poolworker-run ] || fail "the run shim is not installed"
getent passwd poolworker > /dev/null || fail "the poolworker user was not created"
[ -f /etc/poolworker/poolworker.yaml ] || fail "the example config is missing"
dpkg-query --showformat='${Conffiles}\n' --show poolworker | grep -q poolworker.yaml ||
  fail "/etc/poolworker/poolworker.yaml is not a conffile"
for unit in poolworker.service poolworker@.service; do
  [ -f "/lib/systemd/system/$unit" ] || fail "$unit is not installed"
done
# A template unit is verified through an instance of it.
cp /lib/systemd/system/poolworker@.service "$out/poolworker@ci.service"
systemd-analyze verify /lib/systemd/system/poolworker.service "$out/poolworker@ci.service" \
  || fail "systemd-analyze verify"
# The installed binary finds its shim and its template without the build tree.
/usr/bin/poolworker template --type process | grep -q '"job_configuration"' ||
  fail "poolworker template --type process"
echo "test_deb: ok"
