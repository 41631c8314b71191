#!/usr/bin/env bash
# Installs what the demo needs (scripts/setup.sh --demo), starts a real AgentFense server and
# runs the demo agent against it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
state=$(mktemp -d /tmp/agentfense-demo.XXXXXX)
chmod 711 "$state"  # the sandboxes run as their own uid and must reach their view below
.venv/bin/agentfense serve --listen "unix:$state/server.sock" --state-dir "$state/state" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$state"' EXIT
for _ in $(seq 300); do
  [ -S "$state/server.sock" ] && break
  kill -0 $server 2>/dev/null || { echo "demo: the server did not start" >&2; exit 1; }
  sleep 0.1
done
.venv/bin/python examples/demo.py --endpoint "unix:$state/server.sock"
