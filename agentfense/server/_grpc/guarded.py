"""Every RPC handler runs in a task of an anyio task group.

grpclib cancels a handler whose client went away with a native asyncio cancellation of its
task, which cuts through anyio's shields: a spawn waiting (shielded) for the sandbox to report
the new process would lose it, and the command would outlive its cancelled caller. Run one
level down, in a child task, the handler sees that cancellation as an anyio one, which
shielded work honours.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import grpclib.const

from .layers import wrap_handlers


def _guarded(func: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    async def handler(stream: Any) -> None:
        failed: list[BaseException] = []

        async def run() -> None:
            try:
                await func(stream)
            except Exception as exc:  # re-raised as is below, not in an exception group
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
        if failed:
            raise failed[0]

    return handler


def guarded(mapping: dict[str, grpclib.const.Handler]) -> dict[str, grpclib.const.Handler]:
    """``mapping`` (a service's ``__mapping__``) with every handler guarded."""
    return wrap_handlers(mapping, lambda _, h: _guarded(h.func))
