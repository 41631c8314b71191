#!/usr/bin/env bash
# Installs what the demo needs (scripts/setup.sh --demo), starts a real AgentFense server and
# runs the demo agent against it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
state=$(mktemp -d /tmp/agentfense-demo.XXXXXX)
chmod 711 "$state"  # the sandboxes run as their own uid and must reach their view below
# The server's log (a line per sandbox created, started, stopped, destroyed) goes to a file,
# shown at the end, so that it does not interleave with the demo's own output.
log="$state/server.log"
.venv/bin/agentfense serve --listen "unix:$state/server.sock" --state-dir "$state/state" >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$state"' EXIT
for _ in $(seq 300); do
  [ -S "$state/server.sock" ] && break
  kill -0 $server 2>/dev/null || { echo "demo: the server did not start:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
status=0
.venv/bin/python examples/demo.py --endpoint "unix:$state/server.sock" || status=$?
echo
echo "== what the server logged"
cat "$log"
exit $status
