"""A task group whose tasks cannot end it: what one raises is logged and ends that task only.

The server's long-lived tasks (expiry, the removal of Docker leftovers, the fs process's
supervision, sandbox agents, session readers) all run in the sandbox manager's task group,
and an anyio task group cancels every task when one fails: one error anywhere would end
``agentfense serve`` and every sandbox with it. Under this wrapper such an error is written
to the log instead. Cancellation passes through untouched; a task started with ``start`` that
fails before it reports readiness still fails its starter, as it would without the wrapper.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from contextvars import Context
from typing import Any, Literal, TypeVar

import anyio
import anyio.abc

T = TypeVar("T")


async def _logged(coro: Coroutine[Any, Any, T], name: object, log: logging.Logger) -> T | None:
    try:
        return await coro
    except Exception:
        log.exception("background task %s failed; the server goes on without it", name)
        return None


class ContainedTaskGroup(anyio.abc.TaskGroup):
    """``inner`` with every task's errors logged to ``log`` rather than raised into it."""

    def __init__(self, inner: anyio.abc.TaskGroup, log: logging.Logger) -> None:
        self._inner = inner
        self._log = log
        self.cancel_scope = inner.cancel_scope

    # A failed task's handle holds None (nothing here reads a task's value).
    def create_task(  # type: ignore[override]
        self, coro: Coroutine[Any, Any, T], *, name: object = None, context: Context | None = None
    ) -> anyio.TaskHandle[T | None]:
        return self._inner.create_task(_logged(coro, name, self._log), name=name, context=context)

    async def start(
        self,
        func: Callable[..., Coroutine[Any, Any, Any]],
        *args: object,
        name: object = None,
        return_handle: Literal[False, True] = False,
    ) -> Any:
        log = self._log

        async def run(*args: object, task_status: anyio.abc.TaskStatus[Any]) -> None:
            started = False

            class Status(anyio.abc.TaskStatus[Any]):
                def started(self, value: object = None) -> None:
                    nonlocal started
                    started = True
                    task_status.started(value)

            try:
                await func(*args, task_status=Status())
            except Exception:
                if not started:
                    raise
                log.exception("background task %s failed; the server goes on without it", name)

        return await self._inner.start(run, *args, name=name, return_handle=return_handle)

    async def __aenter__(self) -> ContainedTaskGroup:
        await self._inner.__aenter__()
        self.cancel_scope = self._inner.cancel_scope  # (made on entry under trio)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool:
        return bool(await self._inner.__aexit__(*exc_info))
