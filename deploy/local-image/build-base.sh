#!/usr/bin/env bash
# Builds local/python:3.11-bookworm, the stand-in for python:3.11-slim-bookworm where no image
# registry is reachable (Dockerfile.base beside this file), from a debootstrapped Debian 12:
#
#   deploy/local-image/build-base.sh            # as root, with a running Docker engine
#   make image IMAGE_BUILD_ARGS="$(deploy/local-image/build-base.sh --print-args)"
#
# The root filesystem is trimmed the way Debian's own -slim images are (debuerreotype --slimify,
# the base of the official python:*-slim images): no documentation but the copyright files, no man
# or info pages, no translations, and a dpkg configuration that keeps later installs that way;
# no apt lists or caches. Set SLIM=0 for the untrimmed minbase root filesystem.
set -euo pipefail

debian_tag=${DEBIAN_TAG:-local/debian:bookworm}
python_tag=${PYTHON_TAG:-local/python:3.11-bookworm}
build_args="--network host --build-arg PYTHON_BASE=$python_tag --build-arg BUILD_DEPS=\"gcc libc6-dev python3.11-dev\""
if [ "${1:-}" = --print-args ]; then
  echo "$build_args"
  exit 0
fi
here=$(cd "$(dirname "$0")" && pwd)

if ! docker image inspect "$debian_tag" >/dev/null 2>&1; then
  rootfs=$(mktemp -d /tmp/orders-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs"
  if [ "${SLIM:-1}" = 1 ]; then
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# As Debian's -slim images: documentation, manuals and translations are not installed.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    rm -rf "$rootfs"/usr/share/{groff,info,linda,lintian/overrides,man}/*
  fi
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/* "$rootfs"/tmp/*
  tar -C "$rootfs" -c . | docker import - "$debian_tag"
fi

ctx=$(mktemp -d)
cp "$here/Dockerfile.base" "$ctx/Dockerfile"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"  # a TLS-intercepting proxy's CA, if any
docker build --network host --build-arg DEBIAN_BASE="$debian_tag" -t "$python_tag" "$ctx"
rm -rf "$ctx"
docker image ls "$debian_tag"
docker image ls "$python_tag"
echo "build the service image with: docker build $build_args -t orders-service:local ."
