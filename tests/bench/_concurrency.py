"""Many sandboxes at once: ``sleep`` in several sandboxes at once vs one after another, and
the client's cost of many sandboxes at once (measured in a fresh process, ``_fanout``).

Each sandbox is the async guide's pattern: ``async with await AsyncSandbox.from_local(...)``
(upload, create, start), one command, destroy; the wall time covers all of it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from agentfense import AsyncSandbox

from ._ours import PRESET

ROOT = Path(__file__).resolve().parents[2]  # where ``python -m tests.bench._fanout`` runs


async def sleeper(endpoint: str, project: Path, seconds: float) -> None:
    """One sandbox on ``project`` running ``sleep seconds``."""
    async with await AsyncSandbox.from_local(project, preset=PRESET, endpoint=endpoint) as sandbox:
        result = await sandbox.run(f"sleep {seconds:g}")
        if result.exit_code != 0:
            raise RuntimeError(f"'sleep' exited with {result.exit_code}: {result.stderr!r}")


async def sleepers_at_once(endpoint: str, project: Path, count: int, seconds: float) -> float:
    """Wall seconds of ``count`` sleeping sandboxes started together (a task group)."""
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(sleeper, endpoint, project, seconds)
    return time.perf_counter() - started


async def sleepers_in_turn(endpoint: str, project: Path, count: int, seconds: float) -> float:
    """Wall seconds of the same ``count`` sleeping sandboxes, one after another."""
    started = time.perf_counter()
    for _ in range(count):
        await sleeper(endpoint, project, seconds)
    return time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class Fanout:
    """What ``_fanout`` measured in its own process: ``count`` sandboxes at once running
    ``echo done``. Memory in bytes; thread counts exclude the sampling thread."""

    backend: str
    count: int
    wall: float
    start_rss: int  # VmRSS after imports, before the first sandbox
    peak_rss: int  # VmHWM after the run: the peak resident memory since the start
    peak_reset: bool  # whether VmHWM was reset at the start (else it may be an earlier peak)
    ru_maxrss: int  # getrusage's peak: includes the parent's (see ``_fanout``), for reference
    threads_start: int  # /proc/self/status Threads before the first sandbox
    threads_peak: int  # its highest sample during the run
    py_threads_peak: int  # threading.active_count(), highest sample
    heap_peak: int | None  # tracemalloc's peak of the Python heap (a separate run), if taken

    @property
    def rss_increase(self) -> int:
        return self.peak_rss - self.start_rss


async def fanout(
    backend: str, endpoint: str, project: Path, count: int, *, tracemalloc: bool = False
) -> Fanout:
    """Run ``_fanout`` in a fresh Python process on ``backend`` and read what it measured."""
    argv = [
        sys.executable,
        "-m",
        "tests.bench._fanout",
        "--backend",
        backend,
        "--endpoint",
        endpoint,
        "--project",
        str(project),
        "--count",
        str(count),
    ]
    if tracemalloc:
        argv.append("--tracemalloc")
    done = await anyio.run_process(argv, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"the {backend} fan-out of {count} exited with {done.returncode}: "
            f"{done.stderr.decode(errors='replace')[-3000:]}"
        )
    return Fanout(**json.loads(done.stdout.decode().splitlines()[-1]))
