"""The pool of sets built ahead: a refill waits for what it was told to (a start's first
command, whose launcher needs the mount lock a build takes), but never longer than its bound;
then it builds sets of the sizes last asked for, up to its size. The builds here are a
function that records when it runs, holding this process's namespaces (the pool schedules;
bwrap's builds are tested with real sandboxes)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from agentfense.runtimes import _held_pool
from agentfense.runtimes._held import HeldNamespaces
from agentfense.runtimes._held_pool import HeldPool

pytestmark = pytest.mark.anyio

SIZES = {"/tmp": 1 << 20}


class _Builds:
    def __init__(self) -> None:
        self.times: list[float] = []

    async def __call__(
        self, sizes: Mapping[str, int], task_group: anyio.abc.TaskGroup
    ) -> HeldNamespaces:
        assert sizes == SIZES
        self.times.append(anyio.current_time())
        await anyio.lowlevel.checkpoint()
        return HeldNamespaces(os.getpid())  # (this process's: real fds, nothing built)


async def test_a_refill_waits_for_the_first_command_then_fills_the_pool() -> None:
    builds = _Builds()
    pool = HeldPool(builds, size=2)
    first_done = anyio.Event()
    async with anyio.create_task_group() as tg:
        pool.want(SIZES, tg, after=first_done)
        await anyio.sleep(0.1)
        assert builds.times == []
        done_at = anyio.current_time()
        first_done.set()
        with anyio.fail_after(5):
            while len(builds.times) < 2:  # noqa: ASYNC110 - the pool's own task
                await anyio.sleep(0.01)
    assert builds.times[0] >= done_at
    assert pool.take(SIZES) is not None
    assert pool.take(SIZES) is not None
    assert pool.take(SIZES) is None


async def test_a_refill_waits_no_longer_than_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_held_pool, "AFTER_AT_MOST", 0.2)
    builds = _Builds()
    pool = HeldPool(builds, size=1)
    async with anyio.create_task_group() as tg:
        began = anyio.current_time()
        pool.want(SIZES, tg, after=anyio.Event())  # (never set: a start with no command)
        with anyio.fail_after(5):
            while not builds.times:  # noqa: ASYNC110 - the pool's own task
                await anyio.sleep(0.01)
    assert 0.2 <= builds.times[0] - began < 2
