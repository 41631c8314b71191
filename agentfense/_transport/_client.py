"""The public transport object: one channel to the server, usable from asyncio or trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol

import anyio
import betterproto
import sniffio

from agentfense._transport._asyncio_side import GrpcCalls, T
from agentfense._transport._endpoint import DEFAULT_ENDPOINT, Endpoint, parse_endpoint
from agentfense.errors import ConnectionError, InvalidConfigurationError


class _Calls(Protocol):
    async def unary(
        self,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> T: ...

    def server_stream(
        self,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[T]]: ...

    async def client_stream(
        self,
        path: str,
        produce: Callable[[], AsyncIterator[betterproto.Message]],
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> T: ...

    async def aclose(self) -> None: ...


class Transport:
    """gRPC calls to one AgentFense server. Create it with :func:`open_transport`.

    ``path`` arguments are full gRPC method paths, e.g. ``"/sandbox.v1.SandboxService/Exec"``.
    Failures raise :class:`agentfense.errors.SandboxError` subclasses only.
    """

    def __init__(
        self, calls: _Calls, endpoint: Endpoint, backend: str, *, secure: bool = False
    ) -> None:
        self._calls = calls
        self._closed = False
        self._parsed = endpoint
        self._secure = secure
        self.endpoint = endpoint.text
        self.backend = backend

    async def unary(
        self,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
        to_the_end: Callable[[], None] | None = None,
    ) -> T:
        """One request, one response. ``timeout`` (seconds) is sent as the gRPC deadline.

        ``to_the_end``: the call completes even if the caller is cancelled meanwhile, for
        cleanup that must not be cut short; an asyncio cancellation swallowed meanwhile calls
        ``to_the_end()``, whose owner requests it again (:func:`cancel_again`) once done.
        """
        self._check_open()
        if to_the_end is None:
            return await self._calls.unary(path, request, response_type, timeout=timeout)
        if self.backend == "asyncio":
            from agentfense._transport._detached import unary_to_the_end

            return await unary_to_the_end(
                self._parsed, self._secure, path, request, response_type, timeout, to_the_end
            )
        with anyio.CancelScope(shield=True):
            response = await self._calls.unary(path, request, response_type, timeout=timeout)
        return response

    def server_stream(
        self,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[T]]:
        """``async with transport.server_stream(...) as it: async for message in it: ...``

        Leaving the block early (break, exception, cancellation) cancels the call on the server.
        """
        self._check_open()
        return self._calls.server_stream(path, request, response_type, timeout=timeout)

    async def client_stream(
        self,
        path: str,
        produce: Callable[[], AsyncIterator[betterproto.Message]],
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> T:
        """Send the messages ``produce()`` yields, as it yields them; return the one response.

        ``produce`` is an async-generator function. It runs on the transport's asyncio loop
        (under trio: the private loop thread), so it may use anyio APIs only.
        """
        self._check_open()
        return await self._calls.client_stream(path, produce, response_type, timeout=timeout)

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionError(
                f"cannot reach the AgentFense server at {self.endpoint}: the transport is closed"
            )

    async def aclose(self) -> None:
        """Close the connection. Idempotent."""
        if not self._closed:
            self._closed = True
            await self._calls.aclose()

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def open_transport(endpoint: str = DEFAULT_ENDPOINT, *, secure: bool = False) -> Transport:
    """A :class:`Transport` to ``endpoint`` for the running async library (asyncio or trio).

    ``endpoint`` is ``"host:port"``, ``"[ipv6]:port"``, ``"unix:/path"`` or ``"unix:///path"``;
    ``secure`` uses TLS with the default SSL context (TCP endpoints only). The connection is
    made on the first call.
    """
    parsed = parse_endpoint(endpoint)
    if secure and parsed.path is not None:
        raise InvalidConfigurationError(
            f"endpoint {endpoint!r} is a unix socket; secure=True (TLS) needs a host:port endpoint"
        )
    backend = sniffio.current_async_library()
    calls: _Calls
    if backend == "trio":
        from agentfense._transport._trio_calls import TrioCalls

        calls = await TrioCalls.open(parsed, secure=secure)
    elif backend == "asyncio":
        calls = GrpcCalls(parsed, secure=secure)
    else:
        raise RuntimeError(f"agentfense supports asyncio and trio, not {backend}")
    return Transport(calls, parsed, backend, secure=secure)


def cancel_again() -> None:
    """Request again an asyncio cancellation that calls made ``to_the_end`` swallowed."""
    if sniffio.current_async_library() == "asyncio":
        from agentfense._transport._detached import cancel_again as asyncio_cancel_again

        asyncio_cancel_again()
