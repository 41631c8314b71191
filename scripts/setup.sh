#!/usr/bin/env bash
# Installs what AgentFense needs on a Debian machine (run as root), a line for each step with
# what it does and how long it took:
#
#   bash scripts/setup.sh --demo   what scripts/demo.sh needs: bubblewrap, FUSE, Python, and a
#                                  virtualenv at .venv with agentfense-sandbox[server,trio]
#   bash scripts/setup.sh          what scripts/test.sh needs as well: Docker and mmdebstrap
#                                  (the Docker runtime, and its images built from Debian
#                                  packages), gcc and the static C library (the confine helper),
#                                  the tools the tests run inside sandboxes, and .venv with
#                                  agentfense-sandbox[dev]
#   bash scripts/setup.sh --list [--demo]   says what it would install, and installs nothing
#
# The package is installed editable (pip install -e): the checkout is what runs. When another
# package manager holds the package lock, apt waits for it (up to 10 minutes) and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_steps.sh
. scripts/_steps.sh

demo=0
list=0
for arg; do
  case "$arg" in
    --demo) demo=1 ;;
    --list) list=1 ;;
    *)
      echo "usage: $0 [--demo] [--list]" >&2
      exit 2
      ;;
  esac
done

# the demo: the server (bubblewrap, FUSE) and the Python the sandboxes and .venv run on
packages=(bubblewrap fuse3 python3 python3-venv ca-certificates)
extras=server,trio
if ((!demo)); then
  packages+=(
    gcc python3-dev git
    # the server builds the Docker runtime's confine helper (agentfense/runtimes/confine.c)
    # statically: gcc needs the C library's static archive, which --no-install-recommends omits
    libc6-dev
    # the Docker runtime: scripts/dockerd.sh starts a private dockerd; scripts/docker-images.sh
    # builds its images from Debian packages (mmdebstrap; busybox-static is fetched, not
    # installed)
    docker.io mmdebstrap curl
    # the tools that the user's async guide runs inside sandboxes, which see the host's /usr
    # (tests/integration/test_async_guide.py)
    make python3-pip python3-setuptools python3-wheel python3-pytest python3-pytest-cov
    pylint flake8 mypy
  )
  extras=dev
fi

if ((list)); then
  echo "system packages: ${packages[*]}"
  echo "virtualenv .venv: pip install -e '.[$extras]'"
  exit 0
fi
[ "$(id -u)" = 0 ] || {
  echo "setup: run as root (it installs system packages)" >&2
  exit 1
}
started=$SECONDS

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  wait_for_package_lock
  step "updating the package lists" apt_get update -qq
  wait_for_package_lock
  step "installing ${#missing[@]} system packages: ${missing[*]}" \
    apt_get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "the system packages are installed (${#packages[@]})"
fi

if [ ! -x .venv/bin/python ]; then
  step "creating the virtualenv .venv" /usr/bin/python3 -m venv .venv
fi
step "upgrading pip in .venv" .venv/bin/python -m pip install -q --upgrade pip
# The distribution was called "agentfense" before (a name PyPI gives another project): an
# install under that name would shadow this one.
if .venv/bin/python -m pip show -q agentfense >/dev/null 2>&1; then
  step "removing the old 'agentfense' distribution from .venv" \
    .venv/bin/python -m pip uninstall -y -q agentfense
fi
step "installing agentfense-sandbox[$extras] into .venv (editable)" \
  .venv/bin/python -m pip install -q -e ".[$extras]"
say "ready in $((SECONDS - started)) s ($(.venv/bin/python --version), $(bwrap --version))"
