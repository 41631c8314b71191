"""``python -m tests.bench._fanout --backend B --endpoint E --project P --count N``: N sandboxes
at once, each ``from_local`` + ``run("echo done")`` + destroy, in this fresh process, so that
its memory and threads are the client's own. Prints one JSON line (a ``_concurrency.Fanout``).

The peak is the process's own: VmHWM, its high-water mark, reset just before the first
sandbox. Not ``ru_maxrss``: it keeps the peak of the imports, and the parent's peak too (a
child started with vfork inherits it at exec). With ``--tracemalloc`` it also traces the
Python heap (its peak); tracing slows the run and adds memory of its own, so the parent takes
the other figures from a run without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import anyio

from agentfense import AsyncSandbox

from ._concurrency import Fanout
from ._ours import PRESET

SAMPLE_EVERY = 0.002  # seconds between two samples of the thread count


def _status(name: str) -> int:
    """A field of /proc/self/status as a number (``kB`` fields in bytes)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                value, *unit = line.split()[1:]
                return int(value) * (1024 if unit == ["kB"] else 1)
    raise RuntimeError(f"no {name} in /proc/self/status")


class ThreadSampler:
    """A thread sampling the process's thread count until stopped (itself not counted)."""

    def __init__(self) -> None:
        self.peak = 0
        self.py_peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="thread-sampler", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, _status("Threads") - 1)
            self.py_peak = max(self.py_peak, threading.active_count() - 1)
            if self._done.wait(SAMPLE_EVERY):
                return

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()


async def echo_done(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(project, preset=PRESET, endpoint=endpoint) as sandbox:
        result = await sandbox.run("echo done")
        if result.exit_code != 0 or result.stdout != "done\n":
            raise RuntimeError(f"'echo done' gave {result.exit_code}, {result.stdout!r}")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


async def measure(backend: str, endpoint: str, project: Path, count: int) -> Fanout:
    peak_reset = _reset_peak_rss()
    start_rss, threads_start = _status("VmRSS"), _status("Threads")
    with ThreadSampler() as sampler:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(echo_done, endpoint, project)
        wall = time.perf_counter() - started
    peak_rss = _status("VmHWM")
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    heap_peak = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else None
    return Fanout(
        backend=backend,
        count=count,
        wall=wall,
        start_rss=start_rss,
        peak_rss=peak_rss,
        peak_reset=peak_reset,
        ru_maxrss=ru_maxrss,
        threads_start=threads_start,
        threads_peak=sampler.peak,
        py_threads_peak=sampler.py_peak,
        heap_peak=heap_peak,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench._fanout", description=__doc__)
    parser.add_argument("--backend", choices=("asyncio", "trio"), required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace the Python heap")
    args = parser.parse_args(argv)
    if args.tracemalloc:
        tracemalloc.start()
    result = anyio.run(
        measure, args.backend, args.endpoint, args.project, args.count, backend=args.backend
    )
    print(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
