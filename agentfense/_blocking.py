"""The SDK's blocking file work, on a few threads per event loop however many sandboxes run.

anyio's default thread limiter allows 40 threads, so 100 concurrent uploads would use 40;
reading project files needs no more than a handful.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar, TypeVarTuple

import anyio
from anyio.lowlevel import RunVar

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

MAX_THREADS = 4
_LIMITER: RunVar[anyio.CapacityLimiter] = RunVar("agentfense_blocking_limiter")


def _limiter() -> anyio.CapacityLimiter:
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(MAX_THREADS)
        _LIMITER.set(limiter)
        return limiter


async def run_sync(func: Callable[[*Ts], T], *args: *Ts) -> T:
    """``func(*args)`` in one of the SDK's threads."""
    return await anyio.to_thread.run_sync(func, *args, limiter=_limiter())


class BlockingFile:
    """A local file read in pieces on the SDK's threads: ``async with BlockingFile(p) as f``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._handle: BinaryIO | None = None

    async def __aenter__(self) -> BlockingFile:
        self._handle = await run_sync(self._path.open, "rb")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            with anyio.CancelScope(shield=True):  # left by a cancellation as well
                await run_sync(self._handle.close)

    async def stat(self) -> os.stat_result:
        assert self._handle is not None
        return await run_sync(os.fstat, self._handle.fileno())

    async def read(self, size: int) -> bytes:
        assert self._handle is not None
        return await run_sync(self._handle.read, size)
