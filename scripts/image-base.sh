#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11 (`python`, venv) and the CA certificates, for
# building the image where no registry is reachable: debootstrap from the Debian mirror, then
# `podman import`. Prints the image's name. The root filesystem is cached as
# .cache/image-base/bookworm.tar; the image is made again from it when missing. Needs root.
#   UPLION_DEBIAN_MIRROR  the Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."

name=localhost/uplion-base:bookworm
cache=.cache/image-base
packages=python3,python3-venv,python-is-python3,ca-certificates
mirror=${UPLION_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PATH=$PATH:/usr/sbin:/sbin

if ! podman image exists "$name"; then
  if [ ! -f "$cache/bookworm.tar" ]; then
    rm -rf "$cache/rootfs"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include="$packages" bookworm "$cache/rootfs" "$mirror" >&2
    # Apt's lists, docs and manuals serve no role of the image.
    rm -rf "$cache"/rootfs/var/lib/apt/lists/* "$cache"/rootfs/var/cache/apt/*.bin \
      "$cache"/rootfs/usr/share/doc/* "$cache"/rootfs/usr/share/man/*
    tar --numeric-owner -C "$cache/rootfs" -cf "$cache/bookworm.tar.partial" .
    mv "$cache/bookworm.tar.partial" "$cache/bookworm.tar"
    rm -rf "$cache/rootfs"
  fi
  podman import --quiet --change 'CMD ["python"]' "$cache/bookworm.tar" "$name" >/dev/null
fi
echo "$name"
