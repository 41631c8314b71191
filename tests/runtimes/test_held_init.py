"""The server's view of a held sandbox's init: alive until it ends, whatever its pidfd's
number (a server holding 1,000 sandboxes has fds far past select()'s 1,024)."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

from agentfense.runtimes import _static_helpers
from agentfense.runtimes._held import _Init


def test_an_init_is_seen_alive_then_ended_whatever_its_fd_number(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 2000:  # (as a server holding many sandboxes would have raised it)
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, max(hard, 2048)))
    process = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(process.pid)
    high = os.dup2(pidfd, 2000)
    os.close(pidfd)
    (tmp_path / "init-1").mkdir()
    init = _Init(high, tmp_path / "init-1", os.memfd_create("door"))
    try:
        assert init.alive()
        process.kill()
        process.wait()
        assert not init.alive()
    finally:
        init.close()
    assert not (tmp_path / "init-1").exists()  # (its leaf goes with it)


def test_work_done_ahead_runs_at_idle_priority_with_its_children(tmp_path: Path) -> None:
    """``launcher idle`` (the pool's bwrap builds) runs its program, and whatever that starts,
    under SCHED_IDLE: a build ahead never takes CPU from a start or a command."""
    launcher = _static_helpers.build("launcher", tmp_path)
    script = 'echo "$0 $1"; chrt -p $$; sh -c "chrt -p \\$\\$"'
    done = subprocess.run(
        [launcher, "idle", "/bin/sh", "-c", script, "one", "two"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "one two"
    policies = [line for line in lines if "scheduling policy" in line]
    assert len(policies) == 2
    assert all(line.endswith(": SCHED_IDLE") for line in policies)
    missing = subprocess.run(
        [launcher, "idle", "/nonexistent/bwrap"], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 126
    assert "cannot run /nonexistent/bwrap: No such file or directory" in missing.stderr
