"""The concurrency groups' suites: sandboxes sleeping at once against one after another
(``sleep``), and many sandboxes at once, each backend's client in a fresh process (``fanout``);
the measurements themselves are in ``_concurrency``."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from ._common import Sizes, attempt, error_rows, mib
from ._concurrency import Fanout, fanout, sleepers_at_once, sleepers_in_turn
from ._stats import MB, SECONDS, THREADS, Row, Summary, Target

CLIENT_MEMORY_TARGET = Target(max_p50=100e6)  # bytes of client memory, sandboxes at once
# Independent of the number of sandboxes: a fixed ceiling (the SDK's blocking work runs on at
# most 4 threads per event loop; under trio there are two loops and the private loop's thread).
THREADS_TARGET = Target(max_p50=16)
SLEEP_SLACK = 0.5  # seconds over one sleep that sandboxes sleeping at once may take in all


def _seconds_row(name: str, backend: str, ours: float, base: float, base_name: str) -> Row:
    return Row(name, backend, Summary.single(ours), Summary.single(base), base_name)


def _sleep_rows(
    count: int, seconds: float, at_once: dict[str, float | Exception], in_turn: float | Exception
) -> list[Row]:
    name = f"{count} x from_local+run('sleep {seconds:g}') at once: wall"
    rows = []
    for backend, ours in at_once.items():
        if isinstance(ours, Exception):
            rows += error_rows([name], backend, ours)
        elif isinstance(in_turn, Exception):
            rows += error_rows([name], backend, in_turn)
        else:
            rows.append(
                Row(
                    name,
                    backend,
                    Summary.single(ours),
                    Summary.single(in_turn),
                    "one after another",
                    Target(max_p50=seconds + SLEEP_SLACK),
                    unit=SECONDS,
                    note=f"{ours - seconds:.2f} s over one sleep; one after another (measured "
                    f"once, on asyncio, between the two backends' runs) "
                    f"{in_turn - count * seconds:.2f} s over {count} sleeps",
                )
            )
    return rows


async def _sleepers(
    measure: Callable[[str, Path, int, float], Awaitable[float]],
    label: str,
    endpoint: str,
    work: Path,
    sizes: Sizes,
    reference: list[float],
) -> float | Exception:
    project = work / "project-small"
    return await attempt(label, measure(endpoint, project, sizes.sleepers, sizes.sleep), reference)


def sleep_suite(endpoint: str, work: Path, sizes: Sizes, reference: list[float]) -> list[Row]:
    """Sandboxes sleeping at once on each backend, and one after another (once) in between."""
    what = f"{sizes.sleepers} sandboxes running 'sleep {sizes.sleep:g}'"
    args = (endpoint, work, sizes, reference)
    at_once: dict[str, float | Exception] = {}
    at_once["asyncio"] = anyio.run(_sleepers, sleepers_at_once, f"asyncio: {what} at once", *args)
    in_turn = anyio.run(_sleepers, sleepers_in_turn, f"asyncio: {what} one after another", *args)
    at_once["trio"] = anyio.run(
        _sleepers, sleepers_at_once, f"trio: {what} at once", *args, backend="trio"
    )
    return _sleep_rows(sizes.sleepers, sizes.sleep, at_once, in_turn)


async def _fanouts(
    backend: str, endpoint: str, project: Path, sizes: Sizes
) -> tuple[Fanout, Fanout]:
    """The small and the large fan-out (the large one's heap peak from a traced run)."""
    small = await fanout(backend, endpoint, project, sizes.fanout_small)
    large = await fanout(backend, endpoint, project, sizes.fanout)
    traced = await fanout(backend, endpoint, project, sizes.fanout, tracemalloc=True)
    return small, dataclasses.replace(large, heap_peak=traced.heap_peak)


def _fanout_rows(
    backend: str, sizes: Sizes, result: tuple[Fanout, Fanout] | Exception
) -> list[Row]:
    many, few = sizes.fanout, sizes.fanout_small
    names = [
        f"{many} x from_local+run('echo done') at once: wall",
        f"client peak RSS increase, {many} sandboxes at once",
        f"client peak threads, {many} sandboxes at once",
    ]
    if isinstance(result, Exception):
        return error_rows(names, backend, result)
    small, large = result
    heap = "-" if large.heap_peak is None else mib(large.heap_peak)
    return [
        dataclasses.replace(
            _seconds_row(names[0], backend, large.wall, small.wall, f"{few} at once"),
            unit=SECONDS,
        ),
        Row(
            names[1],
            backend,
            Summary.single(large.rss_increase),
            Summary.single(small.rss_increase),
            f"{few} at once",
            CLIENT_MEMORY_TARGET,
            unit=MB,
            note=f"fresh client process: RSS {mib(large.start_rss)} at start, peak (VmHWM"
            f"{'' if large.peak_reset else ', not reset'}) {mib(large.peak_rss)} with {many} "
            f"({mib(small.peak_rss)} with {few}); ru_maxrss {mib(large.ru_maxrss)} (includes "
            f"the parent's peak); Python heap peak (tracemalloc, a separate run) {heap}",
        ),
        Row(
            names[2],
            backend,
            Summary.single(large.threads_peak),
            Summary.single(small.threads_peak),
            f"{few} at once",
            THREADS_TARGET,
            unit=THREADS,
            note=f"OS threads (/proc Threads) {large.threads_start} at start, peak "
            f"{large.threads_peak} with {many}, {small.threads_peak} with {few}; "
            f"threading.active_count() peak {large.py_threads_peak} / {small.py_threads_peak}",
        ),
    ]


async def fanout_suite(
    endpoint: str, work: Path, sizes: Sizes, reference: list[float]
) -> list[Row]:
    """Many sandboxes at once, each backend's client in a fresh process of its own."""
    rows = []
    for backend in ("asyncio", "trio"):
        result = await attempt(
            f"{backend}: {sizes.fanout_small}, then {sizes.fanout} sandboxes running "
            "'echo done' at once (fresh client processes)",
            _fanouts(backend, endpoint, work / "project-small", sizes),
            reference,
        )
        rows += _fanout_rows(backend, sizes, result)
    return rows
