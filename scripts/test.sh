#!/usr/bin/env bash
# Sets everything up, then runs every check CI runs: generated code, lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nox --no-venv -s generated lint tests "$@"
