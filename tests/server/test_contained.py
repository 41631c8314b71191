"""The server's task group: a failing task is logged and ends only itself."""

from __future__ import annotations

import logging

import anyio
import anyio.abc
import pytest

from agentfense.server._contained import ContainedTaskGroup

pytestmark = pytest.mark.anyio

log = logging.getLogger("test.contained")


async def test_a_failing_task_ends_only_itself(caplog: pytest.LogCaptureFixture) -> None:
    survived = anyio.Event()

    async def fails() -> None:
        raise OSError("the disk is gone")

    async def lives() -> None:
        await anyio.sleep(0.2)
        survived.set()

    async def fails_after_start(*, task_status: anyio.abc.TaskStatus[str]) -> None:
        task_status.started("up")
        raise ValueError("broken later")

    with anyio.fail_after(5):
        async with ContainedTaskGroup(anyio.create_task_group(), log) as tg:
            tg.start_soon(fails)
            tg.start_soon(lives)
            assert await tg.start(fails_after_start) == "up"
            await survived.wait()
            tg.cancel_scope.cancel()
    assert survived.is_set()
    assert "the disk is gone" in caplog.text
    assert "broken later" in caplog.text


async def test_a_task_failing_before_it_started_fails_its_starter() -> None:
    async def never_starts(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        raise OSError("cannot start")

    async with ContainedTaskGroup(anyio.create_task_group(), log) as tg:
        with pytest.raises(OSError, match="cannot start"):
            await tg.start(never_starts)
