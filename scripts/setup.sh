#!/usr/bin/env bash
# Installs everything AgentFense needs on a Debian machine (run as root): the system packages
# (bubblewrap, FUSE, Python; Docker and mmdebstrap for the Docker runtime and its locally built
# images) and a virtualenv at .venv with the package and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  bubblewrap fuse3 gcc python3 python3-venv python3-dev git ca-certificates
  # the server builds the Docker runtime's confine helper (agentfense/runtimes/confine.c)
  # statically: gcc needs the C library's static archive, which --no-install-recommends omits
  libc6-dev
  # the Docker runtime: scripts/dockerd.sh starts a private dockerd; scripts/docker-images.sh
  # builds its images from Debian packages (mmdebstrap; busybox-static is fetched, not installed)
  docker.io mmdebstrap curl
)
# The tools that the user's async guide runs inside sandboxes, which see the host's /usr
# (tests/integration/test_async_guide.py).
packages+=(make python3-pip python3-setuptools python3-wheel python3-pytest python3-pytest-cov)
packages+=(pylint flake8 mypy)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "setup: ready ($(.venv/bin/python --version), $(bwrap --version))"
