"""The transport's calls for trio callers: grpclib on the SDK's private asyncio loop."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from types import TracebackType
from typing import Generic

import betterproto
import trio

from agentfense._transport._asyncio_side import GrpcCalls, Producer, T
from agentfense._transport._endpoint import Endpoint
from agentfense._transport._loop_thread import is_private_loop, private_loop
from agentfense._transport._tls import ClientTLS
from agentfense._transport._trio_bridge import LoopTask, run_on_loop

# Server-stream messages handed to trio but not yet consumed, at most.
STREAM_WINDOW = 16
# In a forked child: the parent's channels closed there, never to be touched (see aclose).
_KEPT_AFTER_FORK: list[GrpcCalls] = []


async def _new_calls(endpoint: Endpoint, ssl: ClientTLS | None, api_key: str | None) -> GrpcCalls:
    return GrpcCalls(endpoint, ssl=ssl, api_key=api_key)


class TrioCalls:
    """Owns a grpclib channel on the private loop; every method is awaited from trio."""

    def __init__(self, loop: asyncio.AbstractEventLoop, calls: GrpcCalls) -> None:
        self._loop = loop
        self._calls = calls

    @classmethod
    async def open(
        cls, endpoint: Endpoint, *, ssl: ClientTLS | None, api_key: str | None
    ) -> TrioCalls:
        loop = private_loop()
        return cls(loop, await run_on_loop(loop, _new_calls(endpoint, ssl, api_key)))

    async def unary(
        self,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> T:
        coro = self._calls.unary(path, request, response_type, timeout=timeout)
        return await run_on_loop(self._loop, coro)

    def server_stream(
        self,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> TrioServerStream[T]:
        return TrioServerStream(self._loop, self._calls, path, request, response_type, timeout)

    async def client_stream(
        self,
        path: str,
        produce: Producer,
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> T:
        coro = self._calls.client_stream(path, produce, response_type, timeout=timeout)
        return await run_on_loop(self._loop, coro)

    async def aclose(self) -> None:
        if not is_private_loop(self._loop):
            # Made before a fork: no thread runs its loop here, and closing its socket from
            # here would unregister it from the epoll instance the parent shares. Kept as is.
            _KEPT_AFTER_FORK.append(self._calls)
            return
        with trio.CancelScope(shield=True):
            await run_on_loop(self._loop, self._calls.aclose())


class TrioServerStream(Generic[T]):
    """A pump task on the loop reads the stream and hands messages to trio, a window at a time.

    Leaving the ``async with`` block cancels the pump, which resets the HTTP/2 stream.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        calls: GrpcCalls,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        timeout: float | None,
    ) -> None:
        self._loop = loop
        self._calls = calls
        self._args = (path, request, response_type, timeout)
        self._send, self._receive = trio.open_memory_channel[T](STREAM_WINDOW)
        self._window = asyncio.Semaphore(STREAM_WINDOW)  # binds to the loop on first use
        self._ready = trio.Event()
        self._started = False
        self._pump: LoopTask[None] | None = None

    async def _pump_messages(self, token: trio.lowlevel.TrioToken) -> None:  # on the loop
        path, request, response_type, timeout = self._args
        try:
            stream = self._calls.server_stream(path, request, response_type, timeout=timeout)
            async with stream:
                self._started = True
                token.run_sync_soon(self._ready.set)
                async for message in stream:
                    await self._window.acquire()
                    token.run_sync_soon(self._deliver, message)
        finally:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(self._finish)

    def _deliver(self, message: T) -> None:  # in trio
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            self._send.send_nowait(message)

    def _finish(self) -> None:  # in trio
        self._send.close()
        self._ready.set()

    async def __aenter__(self) -> TrioServerStream[T]:
        token = trio.lowlevel.current_trio_token()
        self._pump = pump = LoopTask(self._loop, self._pump_messages(token))
        try:
            await self._ready.wait()
        except BaseException:
            await pump.aclose()
            self._receive.close()
            raise
        if not self._started:  # failed before the call was under way: raise why
            try:
                await pump.wait()
            finally:
                self._receive.close()
        return self

    def __aiter__(self) -> TrioServerStream[T]:
        return self

    async def __anext__(self) -> T:
        assert self._pump is not None
        try:
            message = await self._receive.receive()
        except trio.EndOfChannel:
            await self._pump.wait()  # the stream's final status: raises if it was an error
            raise StopAsyncIteration from None
        self._loop.call_soon_threadsafe(self._window.release)
        return message

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._pump is not None
        await self._pump.aclose()
        self._receive.close()
