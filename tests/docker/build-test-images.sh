#!/usr/bin/env bash
# Builds, from nothing, the images that poolworker's Docker tests run. No registry is needed:
#   poolworker-test/base:bookworm   Debian bookworm made with `debootstrap --variant=minbase`
#                                   and `docker import` (sh, coreutils: enough for the backend's
#                                   integration tests)
#   poolworker-test/prefect:3.8.8   the base plus Python 3 and prefect==3.8.8 from PyPI, in a
#                                   virtualenv at /opt/prefect whose bin/ is first on PATH (for
#                                   end-to-end flow runs)
# An image that already exists is kept: run with --force to rebuild both.
#
#   tests/docker/build-test-images.sh [--force] [--base-only]
#
# Needs root (debootstrap), the `docker` CLI talking to the engine, `debootstrap`, and access to
# a Debian mirror and to PyPI. Variables:
#   POOLWORKER_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   POOLWORKER_BUILD_CA       CA bundle that pip inside the build trusts (default: $PIP_CERT,
#                             else $SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt when it
#                             exists), for machines whose HTTPS goes through a proxy
set -euo pipefail

readonly BASE_IMAGE="poolworker-test/base:bookworm"
readonly PREFECT_IMAGE="poolworker-test/prefect:3.8.8"
readonly PREFECT_VERSION="3.8.8"
readonly SUITE="bookworm"
readonly MIRROR="${POOLWORKER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

force=0
base_only=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --base-only) base_only=1 ;;
    -h | --help)
      sed -n '2,20p' "$0"
      exit 0
      ;;
    *)
      echo "build-test-images: unknown argument '$arg' (see --help)" >&2
      exit 2
      ;;
  esac
done

say() { printf 'build-test-images: %s\n' "$*"; }
die() {
  printf 'build-test-images: ERROR: %s\n' "$*" >&2
  exit 1
}

command -v docker > /dev/null 2>&1 || die "the docker CLI is not installed (needed to import and build images)"
docker version --format '{{.Server.Version}}' > /dev/null 2>&1 ||
  die "the Docker engine does not answer (is it running, and may this user use its socket?)"

image_exists() { docker image inspect "$1" > /dev/null 2>&1; }

workdir="$(mktemp -d "${TMPDIR:-/tmp}/poolworker-images.XXXXXX")"
cleanup() {
  # debootstrap may leave /proc or /sys mounted in the target when it fails half-way.
  for m in proc sys dev/pts; do
    if mountpoint -q "$workdir/rootfs/$m" 2> /dev/null; then
      umount -l "$workdir/rootfs/$m" || true
    fi
  done
  rm -rf "$workdir"
}
trap cleanup EXIT

build_base() {
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root; run this script as root (or with sudo)"
  command -v debootstrap > /dev/null 2>&1 ||
    die "debootstrap is not installed (apt-get install debootstrap; .ci/install-deps lists it)"
  local rootfs="$workdir/rootfs"
  say "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
  if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" > "$workdir/debootstrap.log" 2>&1; then
    tail -n 30 "$workdir/debootstrap.log" >&2 || true
    die "debootstrap failed (full log above, last lines)"
  fi
  say "trimming the root filesystem (docs, man pages, apt lists and caches)"
  rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
  # Keep images small for the next layers too: apt installs no docs, recommends or lists.
  mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d" "$rootfs/etc/apt/apt.conf.d"
  cat > "$rootfs/etc/dpkg/dpkg.cfg.d/01-poolworker-nodoc" << 'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF
  cat > "$rootfs/etc/apt/apt.conf.d/01-poolworker-small" << 'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
  : > "$rootfs/etc/hostname"
  rm -f "$rootfs/etc/resolv.conf"
  say "importing the root filesystem as $BASE_IMAGE"
  tar -C "$rootfs" --numeric-owner -c . |
    docker import \
      --change 'CMD ["/bin/bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'LABEL io.poolworker.test-image=1' \
      --message "poolworker test base: debootstrap --variant=minbase $SUITE" \
      - "$BASE_IMAGE" > /dev/null ||
    die "docker import of $BASE_IMAGE failed"
}

build_ca_bundle() {
  local candidate
  for candidate in "${POOLWORKER_BUILD_CA:-}" "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" \
    /etc/ssl/certs/ca-certificates.crt; do
    if [ -n "$candidate" ] && [ -f "$candidate" ]; then
      echo "$candidate"
      return
    fi
  done
}

build_prefect() {
  local context="$workdir/prefect-context"
  mkdir -p "$context"
  local ca
  ca="$(build_ca_bundle)"
  if [ -n "$ca" ]; then
    say "pip inside the build trusts the CA bundle $ca"
    cp "$ca" "$context/build-ca.crt"
  else
    : > "$context/build-ca.crt"
  fi
  cat > "$context/Dockerfile" << EOF
FROM $BASE_IMAGE
COPY build-ca.crt /tmp/build-ca.crt
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      python3 python3-venv ca-certificates > /dev/null \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt/*
RUN python3 -m venv /opt/prefect \\
 && if [ -s /tmp/build-ca.crt ]; then export PIP_CERT=/tmp/build-ca.crt; fi \\
 && /opt/prefect/bin/pip install --no-cache-dir --disable-pip-version-check -q \\
      "prefect==$PREFECT_VERSION" \\
 && rm -f /tmp/build-ca.crt \\
 && find /opt/prefect -name '__pycache__' -prune -exec rm -rf {} + \\
 && /opt/prefect/bin/prefect version > /dev/null
ENV PATH=/opt/prefect/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1
LABEL io.poolworker.test-image=1
CMD ["prefect", "version"]
EOF
  say "building $PREFECT_IMAGE (Python 3 and prefect==$PREFECT_VERSION from PyPI; a few minutes)"
  # The host network: the build reaches the mirror and PyPI the way this machine does.
  if ! DOCKER_BUILDKIT=0 docker build --network host --pull=false --rm --force-rm \
    -t "$PREFECT_IMAGE" "$context" > "$workdir/build.log" 2>&1; then
    tail -n 40 "$workdir/build.log" >&2 || true
    die "docker build of $PREFECT_IMAGE failed (last lines above)"
  fi
}

if [ "$force" -eq 1 ] || ! image_exists "$BASE_IMAGE"; then
  build_base
  say "built $BASE_IMAGE"
else
  say "$BASE_IMAGE exists, kept"
fi

if [ "$base_only" -eq 1 ]; then
  exit 0
fi

if [ "$force" -eq 1 ] || ! image_exists "$PREFECT_IMAGE"; then
  build_prefect
  say "built $PREFECT_IMAGE"
else
  say "$PREFECT_IMAGE exists, kept"
fi

docker image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' 'poolworker-test/*' 2> /dev/null || true
