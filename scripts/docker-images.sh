#!/usr/bin/env bash
# Builds the Docker images AgentFense's tests and docs use from Debian packages, and imports them
# into the dockerd at $DOCKER_HOST (default: the one scripts/dockerd.sh starts). Nothing is
# pulled from a registry: packages come from the machine's Debian mirror (its apt sources).
#
#   agentfense/busybox:latest  busybox-static, an applet link for each command, root and a
#                              `sandbox` user (uid 59000), /tmp 1777
#   python:3.11-slim           a minimal Debian (mmdebstrap, minbase) with python3 (also as
#                              `python`), pip, venv, setuptools, wheel, pytest, pytest-cov,
#                              flake8, pylint, procps and the `sandbox` user: the async guide's
#                              Docker examples run as written, offline
#
#   bash scripts/docker-images.sh          # build what is not cached, import what is missing
#   bash scripts/docker-images.sh build    # only build the rootfs tarballs (no dockerd needed)
#
# Rootfs tarballs are cached in $AGENTFENSE_IMAGE_CACHE (default /var/cache/agentfense/images),
# keyed by a hash of this script, the apt sources and the versions of every package that goes
# in; AGENTFENSE_IMAGE_REBUILD=1 rebuilds them anyway. An image already in the daemon with the
# same key (its org.agentfense.image-key label) is not imported again.
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."

cache=${AGENTFENSE_IMAGE_CACHE:-/var/cache/agentfense/images}
: "${DOCKER_HOST:=unix://${AGENTFENSE_DOCKER_DIR:-/tmp/agentfense-docker}/docker.sock}"
export DOCKER_HOST
mode=${1:-all}
sandbox_uid=59000

busybox_tag=agentfense/busybox:latest
python_tag=python:3.11-slim
python_packages=(
  python3 python-is-python3 python3-pip python3-venv python3-setuptools python3-wheel
  python3-pytest python3-pytest-cov flake8 pylint procps
)
# what Debian's own slim images leave out
dpkg_excludes=(
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
)

# say, step, wait_for_package_lock, apt_get (apt that waits for another package manager)
say_as=docker-images.sh
# shellcheck source=scripts/_steps.sh
. scripts/_steps.sh

die() {
  say "$*" >&2
  exit 1
}

case "$mode" in
  all | build) ;;
  *) die "usage: $0 [build]" ;;
esac
[ "$(id -u)" = 0 ] || die "run as root"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: run scripts/setup.sh"

# shellcheck disable=SC1091
suite=${AGENTFENSE_IMAGE_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}

apt_sources() {
  local f
  for f in "${AGENTFENSE_APT_SOURCES:-}" /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -n "$f" ] && [ -s "$f" ] && grep -qE '^[[:space:]]*(deb[[:space:]]|URIs:)' "$f"; then
      echo "$f"
      return 0
    fi
  done
  die "no Debian apt sources found: set AGENTFENSE_APT_SOURCES to a sources.list file"
}
sources=$(apt_sources)

# The host's package lists tell the versions (and are needed to fetch busybox-static).
if ! apt-cache show --no-all-versions busybox-static >/dev/null 2>&1; then
  wait_for_package_lock
  step "updating the package lists" apt_get update -qq
fi

# "name version" of the packages and everything they depend on, as the host's apt sees them
closure_versions() {
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances "$@" 2>/dev/null |
    grep -v '^[[:space:]<]' | sort -u |
    xargs apt-cache show --no-all-versions 2>/dev/null |
    awk '/^Package:/ { p = $2 } /^Version:/ { print p, $2 }' | sort -u
}

image_key() { # kind packages...
  {
    echo "$1 $suite"
    cat "$self" "$sources"
    closure_versions "${@:2}"
  } | sha256sum | cut -c1-16
}

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
work=$(mktemp -d "$cache/tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Builds $cache/KIND-KEY.tar with BUILDER unless it is cached; prints its path.
cached_tar() { # kind key builder
  local kind=$1 key=$2 builder=$3 tar start
  tar=$cache/$kind-$key.tar
  if [ -s "$tar" ] && [ "${AGENTFENSE_IMAGE_REBUILD:-0}" != 1 ]; then
    say "$kind rootfs: cached ($tar)" >&2
  else
    start=$SECONDS
    say "$kind rootfs: building" >&2
    "$builder" "$work/$kind.tar" >&2
    find "$cache" -maxdepth 1 -name "$kind-*.tar" -delete
    mv "$work/$kind.tar" "$tar"
    say "$kind rootfs: built in $((SECONDS - start)) s ($(du -h "$tar" | cut -f1))" >&2
  fi
  echo "$tar"
}

build_busybox() { # out
  local root=$work/busybox deb applet
  mkdir -p "$work/deb"
  (cd "$work/deb" && apt-get download -qq -o APT::Sandbox::User=root busybox-static)
  deb=$(echo "$work"/deb/busybox-static_*.deb)
  dpkg-deb -x "$deb" "$work/deb/x"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,home/sandbox,proc,sys,dev}
  install -m 0755 "$work/deb/x/bin/busybox" "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
  cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
sandbox:x:$sandbox_uid:$sandbox_uid:sandbox:/home/sandbox:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$root/etc/group" <<EOF
root:x:0:
sandbox:x:$sandbox_uid:
nogroup:x:65534:
EOF
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root"
  chown "$sandbox_uid:$sandbox_uid" "$root/home/sandbox"
  tar --numeric-owner -C "$root" -cf "$1" .
}

build_python() { # out
  local include
  include=$(
    IFS=,
    echo "${python_packages[*]}"
  )
  # shellcheck disable=SC2016 # the hooks' $1 is mmdebstrap's (the rootfs), not ours
  mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --include="$include" "${dpkg_excludes[@]}" \
    --customize-hook="chroot \"\$1\" useradd --uid $sandbox_uid --user-group --create-home --shell /bin/bash sandbox" \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED "$1/etc/resolv.conf" "$1/etc/hostname"' \
    "$suite" "$1" "$sources" </dev/null
}

import_image() { # tag key tar changes...
  local tag=$1 key=$2 tar=$3 have start
  have=$(docker image inspect -f '{{ index .Config.Labels "org.agentfense.image-key" }}' "$tag" 2>/dev/null || true)
  if [ "$have" = "$key" ]; then
    say "$tag: already imported"
    return 0
  fi
  start=$SECONDS
  docker import "${@:4}" --change "LABEL org.agentfense.image-key=$key" "$tar" "$tag" >/dev/null
  say "$tag: imported in $((SECONDS - start)) s"
}

started=$SECONDS
busybox_key=$(image_key busybox busybox-static)
busybox_tar=$(cached_tar busybox "$busybox_key" build_busybox)
python_key=$(image_key python "${python_packages[@]}")
python_tar=$(cached_tar python "$python_key" build_python)

if [ "$mode" = all ]; then
  docker version >/dev/null 2>&1 ||
    die "no dockerd answers at $DOCKER_HOST: run \`bash scripts/dockerd.sh start\` first"
  path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  import_image "$busybox_tag" "$busybox_key" "$busybox_tar" \
    --change "ENV $path" --change 'CMD ["/bin/sh"]'
  import_image "$python_tag" "$python_key" "$python_tar" \
    --change "ENV $path" --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]'
fi
say "ready in $((SECONDS - started)) s"
