"""``reap`` when the server is out of descriptors: it still collects the process."""

from __future__ import annotations

import os
import resource
import subprocess

import anyio
import pytest

from agentfense.runtimes._processes import reap, spawn

pytestmark = pytest.mark.anyio


async def test_a_reap_short_of_descriptors_collects_the_process_once_it_can() -> None:
    """A reap started at the limit failed to open its pidfd (EMFILE) and gave up: the
    process stayed a zombie of the server's for good (a waiting launcher, in CI)."""
    process = spawn(["sleep", "0.3"], stdin=subprocess.DEVNULL)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.dup(0)
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))  # (no new descriptor)
    try:
        with pytest.raises(OSError, match="Too many open files"):
            os.pidfd_open(process.pid)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reap, process)
                await anyio.sleep(0.1)  # (it has tried, and is waiting to try again)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if process.returncode is None:
            process.kill()
            process.wait()
    assert process.returncode == 0


async def test_a_reap_of_a_collected_process_returns() -> None:
    process = spawn(["true"], stdin=subprocess.DEVNULL)
    process.wait()
    with anyio.fail_after(5):
        await reap(process)
    assert process.returncode == 0
