#!/usr/bin/env bash
# Prints the path of a cached Debian 12 (bookworm) root file system tarball for
# ARCH (amd64 or arm64), building it with debootstrap the first time.
#
# The system tests boot the amd64 tree under systemd-nspawn and run the arm64 one
# under qemu-user. debootstrap takes 1-3 minutes, so the tree is cached outside
# the git clone (CI clones afresh on the same machine), keyed by a hash of
# everything that shapes it: a changed package list builds a new tarball.
#
#   packaging/rootfs.sh amd64      -> /var/cache/edgeloop-tests/rootfs-amd64-<hash>.tar
set -euo pipefail

arch=${1:?usage: rootfs.sh amd64|arm64}
cache=${EDGELOOP_TEST_CACHE:-/var/cache/edgeloop-tests}
suite=bookworm
# The mirror apt already uses on this machine (the only network may be the registries).
mirror=${DEBIAN_MIRROR:-$(grep -rhoE 'https?://[^ ]*debian\.org/debian/?' \
  /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | grep -v security | head -n1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}
# systemd as PID 1 in the amd64 container; python3-venv for the package's postinst.
include=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates
key=$(printf '%s\n' "$suite" "$arch" "$include" "v1" | sha256sum | cut -c1-12)
tarball="$cache/rootfs-$arch-$key.tar"

if [ -s "$tarball" ]; then
  echo "$tarball"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build-$arch.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
  "$(dirname "$0")/binfmt.sh" >&2
fi
debootstrap --arch="$arch" --variant=minbase --include="$include" \
  "$suite" "$work/root" "$mirror" >&2
# A container needs a machine id of its own at boot; an empty file makes systemd
# generate a fresh one each boot instead of reusing the build's.
: >"$work/root/etc/machine-id"
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
tar -C "$work/root" --numeric-owner -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tarball"
echo "$tarball"
