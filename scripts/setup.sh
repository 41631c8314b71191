#!/usr/bin/env bash
# Installs everything AgentFense needs on a Debian machine (run as root): the system packages
# (bubblewrap, FUSE, Python) and a virtualenv at .venv with the package and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(bubblewrap fuse3 libfuse3-dev pkg-config gcc python3 python3-venv python3-dev git ca-certificates)
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
