#!/usr/bin/env bash
# The docker driver's test prerequisites, each only when missing: Debian's
# container engine and compose, debootstrap and a static busybox, and two
# root filesystems cached outside the repository (no registry is reachable,
# so nothing is ever pulled): a minimal Debian and one holding only busybox.
# The tests import them into their own dockerd (test/helpers/docker.ts).
# OPENSHELL_SKIP_DOCKER_SETUP=1 skips all of it (the docker tests then say why they skip).
set -euo pipefail
[ "${OPENSHELL_SKIP_DOCKER_SETUP:-}" = 1 ] && exit 0
cache=${OPENSHELL_TEST_CACHE:-/var/cache/openshell-test}
here=$(cd "$(dirname "$0")" && pwd)

# The supervisor bundle copies bwrap, nft and friends from this machine.
bash "$here/test-deps.sh" dockerd=docker.io docker-compose=docker-compose debootstrap=debootstrap \
  busybox=busybox-static bwrap=bubblewrap nft=nftables ip=iproute2 setpriv=util-linux nsenter=util-linux
# Debian's busybox package is dynamic; the busybox-only image needs busybox-static's.
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
fi

mkdir -p "$cache"
# The marker is under /usr: a confined sandbox sees the image's /usr, not all of its /etc.
# Bump the version when the images change: tests import <name>-v<version>.tar as openshell-test/<name>:v<version>.
version=2
marker() { mkdir -p "$2/usr/share"; printf 'openshell-test image %s\n' "$1" | tee "$2/etc/openshell-test-image" >"$2/usr/share/openshell-test-image"; }

# The busybox-only image: /bin/busybox and its applet links, nothing else.
if [ ! -s "$cache/busybox-v$version.tar" ]; then
  root=$(mktemp -d "$cache/busybox.XXXXXX")
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list); do [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  marker busybox "$root"
  tar -C "$root" -cf "$cache/busybox-v$version.tar.tmp" . && mv "$cache/busybox-v$version.tar.tmp" "$cache/busybox-v$version.tar"
  rm -rf "$root"
fi

# The Debian image: debootstrap --variant=minbase from the mirror apt already uses.
if [ ! -s "$cache/debian-v$version.tar" ]; then
  mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "docker-test-setup: no Debian mirror in apt's sources" >&2; exit 1; }
  root=$(mktemp -d "$cache/debian.XXXXXX")
  echo "docker-test-setup: debootstrap bookworm (minbase) into $root, once" >&2
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    { echo "docker-test-setup: debootstrap failed, see $cache/debootstrap.log" >&2; rm -rf "$root"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  marker debian "$root"
  tar -C "$root" --numeric-owner -cf "$cache/debian-v$version.tar.tmp" . && mv "$cache/debian-v$version.tar.tmp" "$cache/debian-v$version.tar"
  rm -rf "$root"
fi
