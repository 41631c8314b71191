"""The public transport object: one channel to the server, usable from asyncio or trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol

import betterproto
import sniffio

from agentfense._transport._asyncio_side import GrpcCalls, T
from agentfense._transport._endpoint import DEFAULT_ENDPOINT, Endpoint, parse_endpoint
from agentfense._transport._finishing import (
    current_block,
    overdue,
    unary_on_its_own_connection,
)
from agentfense._transport._tls import ClientTLS, client_tls
from agentfense.errors import (
    ConnectionError,
    InvalidConfigurationError,
    SandboxError,
    StatusCode,
)
from agentfense.types import TLSConfig


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
        self,
        calls: _Calls,
        endpoint: Endpoint,
        backend: str,
        *,
        ssl: ClientTLS | None = None,
        api_key: str | None = None,
    ) -> None:
        self._calls = calls
        self._closed = False
        self._parsed = endpoint
        self._ssl = ssl
        self._api_key = api_key
        self.endpoint = endpoint.text
        self.backend = backend

    async def unary(
        self,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> T:
        """One request, one response. ``timeout`` (seconds) is sent as the gRPC deadline.

        In a :func:`finishing` block the call runs to its end through the caller's
        cancellation, within the block's deadline.
        """
        self._check_open()
        block = current_block()
        if block is None:
            return await self._calls.unary(path, request, response_type, timeout=timeout)
        deadline = block.deadline(timeout)
        try:
            if self.backend == "asyncio":
                if isinstance(self._calls, GrpcCalls):
                    self._calls.connect_ahead()  # (the caller's next call needs it)
                call = unary_on_its_own_connection(
                    self._parsed,
                    self._ssl,
                    path,
                    request,
                    response_type,
                    deadline,
                    self._api_key,
                )
                return await block.wait_elsewhere(call, path.rsplit("/", 1)[-1])
            # trio: the block's shield keeps the caller's cancellation out.
            return await self._calls.unary(path, request, response_type, timeout=deadline)
        except SandboxError as exc:
            if exc.code != StatusCode.DEADLINE_EXCEEDED:
                raise
            raise overdue(path, self.endpoint, deadline) from exc

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


async def open_transport(
    endpoint: str = DEFAULT_ENDPOINT,
    *,
    api_key: str | None = None,
    tls: TLSConfig | None = None,
) -> Transport:
    """A :class:`Transport` to ``endpoint`` for the running async library (asyncio or trio).

    ``endpoint`` is ``"host:port"``, ``"[ipv6]:port"``, ``"unix:/path"`` or ``"unix:///path"``;
    ``api_key`` is sent as ``authorization: Bearer <api_key>`` with every call; ``tls``
    connects over TLS (TCP endpoints only), as :func:`client_context` says. The connection is
    made on the first call.
    """
    parsed = parse_endpoint(endpoint)
    if tls is not None and parsed.path is not None:
        raise InvalidConfigurationError(
            f"endpoint {endpoint!r} is a unix socket; TLS (secure=True, tls=) needs a "
            "host:port endpoint"
        )
    ssl = None if tls is None else client_tls(tls)
    backend = sniffio.current_async_library()
    calls: _Calls
    if backend == "trio":
        from agentfense._transport._trio_calls import TrioCalls

        calls = await TrioCalls.open(parsed, ssl=ssl, api_key=api_key)
    elif backend == "asyncio":
        calls = GrpcCalls(parsed, ssl=ssl, api_key=api_key)
    else:
        raise RuntimeError(f"agentfense supports asyncio and trio, not {backend}")
    return Transport(calls, parsed, backend, ssl=ssl, api_key=api_key)
