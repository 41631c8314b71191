#!/bin/sh
# Every figure of README.md, in one sequential run (as root; about two minutes on a quiet
# machine). Each step prints the load average first: the machine is shared.
set -e
cd "$(dirname "$0")"
PY=${PY:-/work/main/.venv/bin/python}
export PYTHONPATH="$(cd ../.. && pwd)"
gcc -O2 -o /tmp/issue16-bin/spawnbench spawnbench.c 2>/dev/null || { mkdir -p /tmp/issue16-bin; gcc -O2 -o /tmp/issue16-bin/spawnbench spawnbench.c; }
gcc -static -Os -o /tmp/issue16-bin/attach attach.c
for step in "exec 300" "create 100" "burst 100" "stagger 100" "jobs" "idle 100" "idle 1000" "bwrapidle 100"; do
    echo "== $step (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    $PY bench.py $step
done
echo "== spawnbench (load: $(cut -d' ' -f1-3 /proc/loadavg))"
$PY - <<'PY'
import subprocess, nsbox
from pathlib import Path
nsbox.build(); nsbox.subreaper()
ws = Path("/tmp/issue16-ws")
nsbox.create("sb", ws)
try:
    launcher = f"{nsbox.LAUNCHER} {nsbox.NSDIR / 'sb'} - {nsbox.HOST_UID} {nsbox.HOST_UID} 0 -- /bin/true"
    raw = " ".join(nsbox.bwrap_argv(ws, ["--", "/bin/true"]))
    out = subprocess.run(["/tmp/issue16-bin/spawnbench", "300", "/bin/true", launcher, raw],
                         capture_output=True, text=True, check=True).stdout
    print(out.replace(raw, "bwrap <today's isolation> /bin/true"))
finally:
    nsbox.destroy("sb")
    nsbox.reap()
PY
echo "== A2 probe (load: $(cut -d' ' -f1-3 /proc/loadavg))"
$PY a2_userns.py
echo "== fuse attach (load: $(cut -d' ' -f1-3 /proc/loadavg))"
$PY fuse_attach.py
