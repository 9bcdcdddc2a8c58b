#!/usr/bin/env bash
# Test only: the base images of the deployment, built from Debian packages because no
# image registry can be reached here.
#   hetserve-test-base:bookworm      debootstrap minbase + python3 (stands in for python:3.11-slim)
#   hetserve-test-redis:bookworm     + Debian's redis-server   (stands in for redis:7)
#   hetserve-test-postgres:bookworm  + Debian's postgresql-15  (stands in for postgres:16)
# The machine's CA bundle goes into the test base image (pip inside the image builds
# reaches PyPI through a TLS-inspecting gateway); the production Dockerfiles never see it.
#
# Usage: build-base.sh PIP_TRUSTED_HOST   (the bridge address that serves the local torch wheel)
# Env:   HETSERVE_TEST_ROOTFS  debootstrap cache (default /var/cache/hetserve-test/rootfs-bookworm)
#        DEBIAN_MIRROR         (default http://deb.debian.org/debian)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
trusted_host=${1:?usage: build-base.sh PIP_TRUSTED_HOST}
rootfs=${HETSERVE_TEST_ROOTFS:-/var/cache/hetserve-test/rootfs-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
host_ca=${HETSERVE_TEST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
export DOCKER_BUILDKIT=0

t0=$(date +%s)
if [ ! -x "$rootfs/usr/bin/python3" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
  rm -rf "$rootfs.tmp" && mkdir -p "$(dirname "$rootfs")"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 \
    bookworm "$rootfs.tmp" "$mirror" >"$rootfs.log" 2>&1 || { tail -40 "$rootfs.log"; exit 1; }
  rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/*
  date -u +%Y%m%dT%H%M%SZ >"$rootfs.tmp/etc/hetserve-test-rootfs"
  mv "$rootfs.tmp" "$rootfs"
fi
t1=$(date +%s)
# Imported again only when an input changed: a new base image id would rebuild every
# layer of the hetserve images.
stamp=$( (cat "$rootfs/etc/hetserve-test-rootfs" "$host_ca"; echo "$trusted_host") | sha256sum | cut -c1-16)
have=$(docker image inspect --format '{{index .Config.Labels "hetserve.test.stamp"}}' \
  hetserve-test-base:bookworm 2>/dev/null || true)
if [ "$have" != "$stamp" ]; then
  install -D -m 0644 "$host_ca" "$rootfs/etc/ssl/certs/hetserve-test-host-ca.crt"
  tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/hetserve-test-host-ca.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/hetserve-test-host-ca.crt' \
    --change "ENV PIP_TRUSTED_HOST=$trusted_host" \
    --change "LABEL hetserve.test.stamp=$stamp" \
    --change 'CMD ["python3"]' \
    - hetserve-test-base:bookworm >/dev/null
fi
t2=$(date +%s)
for name in redis postgres; do
  docker build -q --build-arg BASE=hetserve-test-base:bookworm -f "$here/$name.Dockerfile" \
    -t "hetserve-test-$name:bookworm" "$here" >/dev/null
done
t3=$(date +%s)
echo "base images: debootstrap $((t1 - t0)) s, import $((t2 - t1)) s, redis+postgres $((t3 - t2)) s"
