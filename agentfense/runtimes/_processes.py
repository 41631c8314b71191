"""Spawning and reaping the runtimes' helper processes from the event loop."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import Any

import anyio


def spawn(argv: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
    """Start a program from the event loop's thread. subprocess uses vfork here (no
    ``preexec_fn``), so the loop waits only until the exec (a fraction of a millisecond),
    less than a worker thread's hand-off would cost; and a helper spawned from a worker
    thread would get bwrap's ``--die-with-parent`` when that thread ends."""
    return subprocess.Popen(argv, close_fds=True, **options)


async def reap(process: subprocess.Popen[bytes]) -> None:
    """Wait for the process's exit without a thread, then collect it (cancelled: the server
    stops, and its children with it). Short of descriptors for its pidfd (the server at its
    limit), it polls, less and less often, until it can have one: a reap that gave up left
    the process a zombie for good (a waiting launcher let go as a command was refused
    EMFILE, in CI)."""
    pause = 0.01
    while process.returncode is None:
        try:
            pidfd = os.pidfd_open(process.pid)
        except ProcessLookupError:  # (collected already: ``wait`` says how it ended)
            break
        except OSError:
            if process.poll() is None:
                await anyio.sleep(pause)
                pause = min(pause * 2, 1.0)
            continue
        try:
            await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        break
    process.wait()
