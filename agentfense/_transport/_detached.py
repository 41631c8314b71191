"""Calls that must finish whatever happens to the calling task: cleanup (destroying a
sandbox, deleting the codebase ``from_local`` made, closing a session).

On trio a shielded scope is enough. On asyncio it is not: a native ``task.cancel()`` (which
``asyncio.run`` sends to every task still running when its main coroutine returns, and
``asyncio.wait_for`` and ``gather`` send too) goes through anyio's shields. So there the call
runs on the transport's private loop, which no task of the caller's loop can cancel, while the
caller waits for it; a cancellation the caller receives meanwhile is reported to ``deferred``
and requested again with :func:`cancel_again` once the whole cleanup is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import betterproto

from agentfense._transport._asyncio_side import GrpcCalls, T
from agentfense._transport._endpoint import Endpoint
from agentfense._transport._loop_thread import shared_loop


async def unary_to_the_end(
    endpoint: Endpoint,
    secure: bool,
    path: str,
    request: betterproto.Message,
    response_type: type[T],
    timeout: float | None,
    deferred: Callable[[], None],
) -> T:
    """One unary call on the private loop, on a connection of its own; awaited from asyncio.
    A cancellation of the caller meanwhile is swallowed and ``deferred()`` called."""

    async def call() -> T:
        calls = GrpcCalls(endpoint, secure=secure)
        try:
            return await calls.unary(path, request, response_type, timeout=timeout)
        finally:
            await calls.aclose()

    done = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), shared_loop()))
    task = asyncio.current_task()
    while True:
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            if done.done():
                raise
            deferred()  # by the caller's side: wait on, and have it cancelled again later
            if task is not None:
                task.uncancel()


def cancel_again() -> None:
    """Request again the cancellation of the current asyncio task that a cleanup deferred."""
    task = asyncio.current_task()
    if task is not None:
        task.cancel()
