"""``finishing()``: cleanup that runs to its end whatever happens to its caller.

Cleanup on the way out (destroying a sandbox or a session, deleting the codebase
``from_local`` made, closing a connection) and the create calls whose result the caller must
hold to remove it are written in a ``with finishing(timeout):`` block. It must not be cut
short by the cancellation that is taking the caller out, nor hold it forever:

- A trio cancellation, and an anyio one on asyncio, stop at the block: it is a shielded
  cancel scope, and the caller sees the cancellation at its next checkpoint after the block.
- asyncio's own cancellation (``task.cancel()``: ``asyncio.run`` sends it to every task still
  running when its main coroutine returns, ``wait_for`` on a timeout, ``gather`` to the other
  children) goes through anyio's shields. So on asyncio each unary call made in the block runs
  on the SDK's private loop (``_loop_thread``), over a connection of its own, where no task of
  the caller's loop can cancel it; the caller waits for it, swallowing such a cancellation,
  and requests it again when the outermost block ends (it then comes at the next await).
- Each call is given ``timeout`` seconds as its gRPC deadline: a server that never answers
  holds the block that long, then the call raises ``ConnectionError`` (DEADLINE_EXCEEDED)
  with a sentence saying what may not be done.

Only unary calls and closing are made in such blocks, and only they are protected from
asyncio's own cancellation (a context manager cannot resume a body that a cancellation has
left).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import betterproto

from agentfense._transport._asyncio_side import GrpcCalls, T
from agentfense._transport._endpoint import Endpoint
from agentfense._transport._loop_thread import private_loop
from agentfense._transport._tls import ClientTLS
from agentfense.errors import ConnectionError, StatusCode


@dataclass
class Block:
    """One ``finishing()`` block; nested blocks report a swallowed cancellation outwards."""

    timeout: float
    outer: Block | None
    cancelled: bool = False  # an asyncio cancellation of the caller, swallowed meanwhile

    def _swallowed(self) -> None:
        block = self
        while block.outer is not None:
            block = block.outer
        block.cancelled = True

    def deadline(self, timeout: float | None) -> float:
        """The gRPC deadline of a call in the block that asked for ``timeout``."""
        return self.timeout if timeout is None else min(timeout, self.timeout)

    async def wait_elsewhere(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        """Run ``coro`` on the private loop; wait for its end through any asyncio
        cancellation of the caller (``what`` names the call in errors)."""
        try:
            loop = private_loop()
        except BaseException:
            coro.close()
            raise
        done = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
        task = asyncio.current_task()
        while True:
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                if done.cancelled():  # the private loop is stopping: the process is exiting
                    raise ConnectionError(
                        f"{what} was cut short: the SDK's private event loop is stopping "
                        "(the interpreter is exiting); what it was asked to do may not be done"
                    ) from None
                self._swallowed()
                if task is not None:
                    task.uncancel()
                if done.done():  # finished as the cancellation came: its outcome stands
                    return done.result()


_BLOCK: contextvars.ContextVar[Block | None] = contextvars.ContextVar(
    "agentfense_finishing", default=None
)


def current_block() -> Block | None:
    """The innermost ``finishing()`` block around the caller, if any."""
    return _BLOCK.get()


@contextmanager
def finishing(timeout: float) -> Iterator[None]:
    """``with finishing(timeout):`` the calls in the block run to their end through the
    caller's cancellation (trio's, anyio's, asyncio's own), each for at most ``timeout``
    seconds (or an outer block's, if shorter); a cancellation that came meanwhile reaches the
    caller after the block."""
    outer = _BLOCK.get()
    block = Block(timeout if outer is None else min(timeout, outer.timeout), outer)
    token = _BLOCK.set(block)
    try:
        with anyio.CancelScope(shield=True):
            yield
    finally:
        _BLOCK.reset(token)
        if outer is None and block.cancelled:
            task = asyncio.current_task()
            if task is not None:
                task.cancel()


async def unary_on_its_own_connection(
    endpoint: Endpoint,
    ssl: ClientTLS | None,
    path: str,
    request: betterproto.Message,
    response_type: type[T],
    timeout: float | None,
    api_key: str | None = None,
) -> T:
    """One unary call over a new connection, closed after it (to run on the private loop)."""
    calls = GrpcCalls(endpoint, ssl=ssl, api_key=api_key)
    try:
        return await calls.unary(path, request, response_type, timeout=timeout)
    finally:
        await calls.aclose()


def overdue(path: str, endpoint: str, deadline: float) -> ConnectionError:
    """What a call of a ``finishing()`` block raises when its deadline struck: the work it
    asked for may not be done."""
    name = path.rsplit("/", 1)[-1]
    return ConnectionError(
        f"the AgentFense server at {endpoint} did not answer {name} within {deadline:g} s; "
        "what it was asked to do may not be done",
        code=StatusCode.DEADLINE_EXCEEDED,
    )
