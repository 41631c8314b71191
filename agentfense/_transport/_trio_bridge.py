"""Running grpclib calls for trio callers on the SDK's private asyncio loop (``_loop_thread``).

Each call is one asyncio task on that loop; the trio side waits on a ``trio.Event`` set
through the trio token, so no thread is spent per call. A trio cancellation cancels the asyncio
task (which resets the HTTP/2 stream) and waits, shielded, until that task has really ended.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any, Generic, TypeVar

import sniffio
import trio

from agentfense._transport._loop_thread import is_private_loop
from agentfense.errors import ConnectionError

R = TypeVar("R")


def _loop_context() -> contextvars.Context:
    """The caller's context, minus anything that would make sniffio answer "trio" on the loop."""
    context = contextvars.copy_context()
    context.run(sniffio.current_async_library_cvar.set, None)
    return context


class LoopTask(Generic[R]):
    """A coroutine running as an asyncio task on ``loop``, observed from the current trio run."""

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, R]) -> None:
        self._loop = loop
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        self._task: asyncio.Task[R] | None = None
        if not is_private_loop(loop):  # its thread would never run the task
            coro.close()
            raise ConnectionError(
                "this connection was made before the process forked (or the interpreter "
                "is exiting): its event loop does not run here; open a new client"
            )
        try:
            loop.call_soon_threadsafe(self._start, coro, context=_loop_context())
        except BaseException:
            coro.close()
            raise

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _start(self, coro: Coroutine[Any, Any, R]) -> None:  # on the loop
        self._task = self._loop.create_task(coro)
        self._task.add_done_callback(self._on_done)

    def _on_done(self, _task: asyncio.Task[R]) -> None:  # on the loop
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._done.set)

    def _cancel_on_loop(self) -> None:  # on the loop
        if self._task is not None:
            self._task.cancel()

    async def _cancel_and_wait(self) -> None:
        if not self._done.is_set():
            self._loop.call_soon_threadsafe(self._cancel_on_loop)
        with trio.CancelScope(shield=True):
            await self._done.wait()

    async def wait(self) -> R:
        """The task's result (or exception); a trio cancellation cancels the task first."""
        try:
            await self._done.wait()
        except trio.Cancelled:
            await self._cancel_and_wait()
            if self._task is None or self._task.cancelled():
                raise
            # The call completed before the cancellation reached it: report its outcome; trio
            # raises Cancelled at the caller's next checkpoint.
        except BaseException:
            await self._cancel_and_wait()
            raise
        assert self._task is not None
        return self._task.result()

    async def aclose(self) -> None:
        """Cancel the task if still running and wait for its end, ignoring its outcome."""
        await self._cancel_and_wait()
        if self._task is not None and not self._task.cancelled():
            self._task.exception()  # mark it retrieved (no "exception never retrieved" log)


async def run_on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, R]) -> R:
    """Await ``coro`` on ``loop`` from trio."""
    return await LoopTask(loop, coro).wait()
