#!/usr/bin/env bash
# Sets everything up, then runs every check CI runs: generated code, lint, types, the docs
# site's build (warnings as errors), tests.
# The Docker tests get a private dockerd (scripts/dockerd.sh) with locally built images
# (scripts/docker-images.sh) at $DOCKER_HOST; a dockerd this run starts is stopped when it ends,
# one that was already running is used and left running. AGENTFENSE_DOCKER=0 skips Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if [ "${AGENTFENSE_DOCKER:-1}" != 0 ]; then
  if ! bash scripts/dockerd.sh status >/dev/null 2>&1; then
    trap 'bash scripts/dockerd.sh stop || true' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    bash scripts/dockerd.sh start
  fi
  bash scripts/docker-images.sh
  eval "$(bash scripts/dockerd.sh env)"
fi

.venv/bin/nox --no-venv -s generated lint docs tests "$@"
