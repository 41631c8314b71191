"""What every group of benchmarks shares: the iteration sizes, the CPU reference, running one
measurement (errors returned, not raised) and turning its samples into table rows."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from ._stats import Row, Summary, Target

INFORMATIVE = Target()

Samples = tuple[list[float], list[float]]
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Sizes:
    """Iterations per measurement (ours, baseline) and warm-ups."""

    exec: int = 200
    raw_bwrap: int = 100
    idle: int = 20
    unary: int = 1000
    lifecycle: int = 20
    warmup: int = 10
    lifecycle_warmup: int = 2
    grep: int = 20
    read: int = 20
    first_grep: int = 5  # each in a new sandbox
    create: int = 10
    commit: int = 3
    sandboxes: int = 100  # running at once, for the memory per sandbox
    fs_warmup: int = 1
    session: int = 200
    sleepers: int = 10  # sandboxes sleeping at once, and in turn
    sleep: float = 10.0  # seconds each sleeps
    fanout: int = 100  # sandboxes at once, for the client's memory and threads
    fanout_small: int = 10  # the same with fewer: threads must not grow with the number
    docker_exec: int = 200  # docker run("true") vs the raw Engine API's exec, each side
    docker_lifecycle: int = 20  # docker create+start, destroy vs the raw API, each side
    docker_vs_bwrap: int = 100  # run("true") in a docker vs a bwrap sandbox, each side
    docker_loop: int = 40  # a loop of 100 processes in a docker vs a bwrap sandbox
    creations: int = 100  # sandboxes started, and first commands in each of three runs
    idle_some: int = 100  # idle sandboxes, for the memory per idle sandbox
    idle_many: int = 1000  # the same, on a server of their own

    def quick(self) -> Sizes:
        """Five times fewer iterations (and sandboxes; ten to fifty times fewer sandboxes
        started or idle), shorter sleeps: a smoke run."""
        return Sizes(
            exec=self.exec // 5,
            raw_bwrap=self.raw_bwrap // 5,
            idle=self.idle // 5,
            unary=self.unary // 5,
            lifecycle=self.lifecycle // 5,
            warmup=self.warmup // 5,
            lifecycle_warmup=1,
            grep=self.grep // 5,
            read=self.read // 5,
            first_grep=2,
            create=self.create // 5,
            commit=1,
            sandboxes=self.sandboxes // 5,
            fs_warmup=1,
            session=self.session // 5,
            sleepers=self.sleepers,
            sleep=1.0,
            fanout=self.fanout // 5,
            fanout_small=self.fanout_small // 2,
            docker_exec=self.docker_exec // 5,
            docker_lifecycle=self.docker_lifecycle // 5,
            docker_vs_bwrap=self.docker_vs_bwrap // 5,
            docker_loop=self.docker_loop // 5,
            creations=self.creations // 10,
            idle_some=self.idle_some // 10,
            idle_many=self.idle_many // 50,
        )


def cpu_reference(samples: int = 30) -> list[float]:
    """Timings of a fixed pure-Python loop: how much CPU this run actually got."""
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        sum(range(200_000))
        timings.append(time.perf_counter() - started)
    return timings


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def attempt(label: str, measurement: Awaitable[R], reference: list[float]) -> R | Exception:
    """Run one measurement (errors are returned, not raised), then sample the CPU reference."""
    progress(label)
    try:
        return await measurement
    except Exception as exc:
        progress("".join(traceback.format_exception(exc)).rstrip())
        return exc
    finally:
        reference += cpu_reference(10)


def row(
    name: str, backend: str, result: Samples | Exception, base_name: str, target: Target
) -> Row:
    if isinstance(result, Exception):
        return Row(
            name, backend, None, None, base_name, target, f"{type(result).__name__}: {result}"
        )
    ours, base = result
    return Row(
        name, backend, Summary.of(ours), Summary.of(base) if base else None, base_name, target
    )


def error_rows(names: list[str], backend: str, error: Exception) -> list[Row]:
    return [Row(name, backend, None, error=f"{type(error).__name__}: {error}") for name in names]


def p50(samples: list[float]) -> float:
    return Summary.of(samples).p50


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def kib(value: float) -> str:
    return f"{value / 2**10:.0f} KiB"
