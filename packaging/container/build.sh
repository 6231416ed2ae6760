#!/usr/bin/env bash
# Builds the poolworker sidecar image from nothing (no base image, no registry): the binary, its
# run shim, exactly the shared libraries they load (from ldd), CA certificates, and a non-root
# user. No shell, no package manager.
#
#   packaging/container/build.sh [--bin DIR] [--tag TAG]
#     --bin DIR   folder with poolworker and poolworker-run (default: build/bin)
#     --tag TAG   image tag (default: poolworker:<version>, also tagged poolworker:latest)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="$repo/build/bin"
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
for program in poolworker poolworker-run; do
  [ -x "$bin/$program" ] || { echo "build.sh: $bin/$program is missing: build first (.ci/build)" >&2; exit 1; }
done
version="$("$bin/poolworker" --version | awk '{print $2}')"
tag="${tag:-poolworker:$version}"

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/usr/bin" "$root/usr/libexec/poolworker" "$root/etc/ssl/certs" "$root/tmp" \
  "$root/var/lib/poolworker" "$root/home/poolworker"

install -m 0755 "$bin/poolworker" "$root/usr/bin/poolworker"
install -m 0755 "$bin/poolworker-run" "$root/usr/libexec/poolworker/poolworker-run"
strip --strip-unneeded "$root/usr/bin/poolworker" "$root/usr/libexec/poolworker/poolworker-run"

# Every library the two programs load, at the path the loader looks for it, plus the loader.
copy_with_parents() {
  local src="$1"
  mkdir -p "$root$(dirname "$src")"
  cp -L "$src" "$root$src"
}
{
  ldd "$bin/poolworker"
  ldd "$bin/poolworker-run"
} | awk '/=> \//{print $3} /^\s*\/.*ld-linux/{print $1}' | sort -u | while read -r lib; do
  copy_with_parents "$lib"
done
# The loader also looks for itself at the path written in the binaries.
interp="$(readelf -l "$bin/poolworker" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
[ -e "$root$interp" ] || copy_with_parents "$interp"

cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/nonexistent\npoolworker:x:65532:65532:poolworker:/home/poolworker:/nonexistent\n' > "$root/etc/passwd"
printf 'root:x:0:\npoolworker:x:65532:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"

# As tar files, because COPY --chown of a folder changes what is in it but not the folder itself:
# everything belongs to root but the state directory and the home of the user, which are its.
tar --numeric-owner --owner=0 --group=0 -cf "$context/root.tar" -C "$root" .
tar --numeric-owner --owner=65532 --group=65532 -cf "$context/user.tar" -C "$root" \
  ./var/lib/poolworker ./home/poolworker
rm -rf "$root"

cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
ADD root.tar /
ADD user.tar /
USER 65532:65532
ENV HOME=/home/poolworker \
    POOLWORKER_STATE_DIR=/var/lib/poolworker \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
VOLUME ["/var/lib/poolworker"]
ENTRYPOINT ["/usr/bin/poolworker"]
CMD ["start"]
DOCKERFILE

docker build -q -t "$tag" -t poolworker:latest "$context" > /dev/null
size="$(docker image inspect "$tag" --format '{{.Size}}')"
echo "build.sh: built $tag ($(( size / 1024 / 1024 )) MiB)"
