"""Timing loops: warm-up first, then ours and the baseline interleaved in blocks.

Interleaving keeps the two sides of a ratio under the same machine conditions (other work on
a shared 2-core machine comes and goes), which a run of one side after the other does not.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

Step = Callable[[], Awaitable[object]]


async def _timed(
    step: Step, count: int, samples: list[float], pause: float, self_timed: bool
) -> None:
    for _ in range(count):
        if pause:
            await anyio.sleep(pause)
        started = time.perf_counter()
        result = await step()
        elapsed = time.perf_counter() - started
        if self_timed:
            if not isinstance(result, float):
                raise TypeError(f"a self-timed step returned {result!r}, not seconds")
            elapsed = result
        samples.append(elapsed)


def _share(total: int, blocks: int, index: int) -> int:
    return total * (index + 1) // blocks - total * index // blocks


async def interleaved(
    ours: Step,
    base: Step | None,
    *,
    n_ours: int,
    n_base: int,
    warmup: int,
    blocks: int = 10,
    block_warmup: int = 1,
    pause: float = 0.0,
    self_timed: bool = False,
) -> tuple[list[float], list[float]]:
    """Samples (seconds) of ``ours`` and ``base``, measured in ``blocks`` alternating blocks.

    Each block starts with ``block_warmup`` untimed calls, so that a block measures its side
    warm, not just after the other side ran. ``pause`` is an untimed idle period before each
    timed iteration (for "after idle" cases; use ``block_warmup=0`` with it). With
    ``self_timed``, a sample is what the step returns (seconds it measured itself, e.g. inside
    a sandbox), not the wall time of the call.
    """
    for _ in range(warmup):
        await ours()
        if base is not None:
            await base()
    ours_samples: list[float] = []
    base_samples: list[float] = []
    blocks = max(1, min(blocks, n_ours, n_base if base is not None else n_ours))
    for index in range(blocks):
        for _ in range(block_warmup):
            await ours()
        await _timed(ours, _share(n_ours, blocks, index), ours_samples, pause, self_timed)
        if base is not None:
            for _ in range(block_warmup):
                await base()
            await _timed(base, _share(n_base, blocks, index), base_samples, pause, self_timed)
    return ours_samples, base_samples
