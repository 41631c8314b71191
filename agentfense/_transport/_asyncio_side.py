"""gRPC calls on the current asyncio loop (grpclib); the only place that drives grpclib."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
import betterproto
import h2.exceptions
from grpclib.client import Channel, Handler, Stream
from grpclib.const import Cardinality
from grpclib.events import SendRequest, listen
from grpclib.exceptions import StreamTerminatedError
from grpclib.protocol import H2Protocol

from agentfense._error_details import ReasonCodec
from agentfense._transport._bounded import bound_reads
from agentfense._transport._endpoint import Endpoint
from agentfense._transport._errors import ReplyCodec, mapped_errors, trailers_only_status
from agentfense._transport._tls import ClientTLS, tls_failure
from agentfense.errors import ConnectionError

_REASONS = ReasonCodec()
_REPLIES = ReplyCodec()
T = TypeVar("T", bound=betterproto.Message)  # a generated reply message class
# How long closing a connection waits for it to be gone (a TLS server's close_notify).
CLOSE_TIMEOUT = 2.0
Producer = Callable[[], AsyncIterator[betterproto.Message]]


class _ProducerFailed(Exception):
    """Carries an exception raised by a client-stream producer past the error mapping."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


def _no_response(endpoint: str) -> ConnectionError:
    return ConnectionError(
        f"cannot reach the AgentFense server at {endpoint}: the call ended without a response"
    )


# A TLS server hangs up on a client that does not speak TLS without a word.
_PLAIN_HUNG_UP = (
    "the server closed the connection before answering: if it serves TLS, connect with "
    "secure=True or tls=TLSConfig(...) (or set AGENTFENSE_TLS_CA)"
)


class _WatchedProtocol(H2Protocol):
    """grpclib's connection, keeping why it was lost (a TLS alert that comes after the
    handshake, TLS 1.3's "certificate required" from a server that wants a client
    certificate, reaches grpclib's calls only as "Connection lost"), and telling when it is
    gone (a TLS connection's close waits for the server's goodbye: an asyncio loop that ends
    before then leaves its socket open)."""

    lost: BaseException | None = None
    heard = False  # whether the server sent anything

    def __init__(self, handler: Handler, config: Any, h2_config: Any) -> None:
        super().__init__(handler, config, h2_config)
        self._gone = asyncio.Event()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            self._transport = transport
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc
        self._gone.set()
        super().connection_lost(exc)

    async def gone(self, timeout: float) -> None:
        """Wait until the connection is closed; past ``timeout``, drop it (abort)."""
        if self._transport is None:  # never made (a failed handshake): nothing to wait for
            return
        try:
            with anyio.move_on_after(timeout):
                await self._gone.wait()
        finally:
            if not self._gone.is_set():
                self._transport.abort()


class _Channel(Channel):
    _tls: ClientTLS | None = None
    _last: _WatchedProtocol | None = None

    def _protocol_factory(self) -> H2Protocol:
        self._last = _WatchedProtocol(Handler(), self._config, self._h2_config)
        return self._last

    def why_lost(self) -> str | None:
        """Why the last connection was lost, in a sentence, when TLS (or its absence) may be
        why."""
        protocol = self._last
        if protocol is None or not protocol._gone.is_set():
            return None
        if self._tls is None:  # (a unix socket never serves TLS here)
            return None if protocol.heard or self._path is not None else _PLAIN_HUNG_UP
        told = tls_failure(protocol.lost, "") if protocol.lost is not None else None
        if told is None and not protocol.heard:
            return self._tls.hung_up()
        return told

    async def aclose(self) -> None:
        """Close the connection and wait until it is gone (at most ``CLOSE_TIMEOUT``)."""
        protocol = self._last
        self.close()
        if isinstance(protocol, _WatchedProtocol):
            await protocol.gone(CLOSE_TIMEOUT)


class GrpcCalls:
    """One grpclib channel; construct and use it only on the loop that will run the calls."""

    def __init__(
        self, endpoint: Endpoint, *, ssl: ClientTLS | None, api_key: str | None = None
    ) -> None:
        context = None if ssl is None else ssl.context
        if endpoint.path is not None:
            self.channel = _Channel(
                path=endpoint.path, ssl=context, codec=_REPLIES, status_details_codec=_REASONS
            )
        else:
            self.channel = _Channel(
                endpoint.host,
                endpoint.port,
                ssl=context,
                codec=_REPLIES,
                status_details_codec=_REASONS,
            )
        self.channel._tls = ssl
        self.endpoint = endpoint.text
        self._ahead: asyncio.Task[None] | None = None
        if api_key:
            authorization = f"Bearer {api_key}"

            async def authorize(event: SendRequest) -> None:
                event.metadata["authorization"] = authorization

            listen(self.channel, SendRequest, authorize)

    def connect_ahead(self) -> None:
        """Open the connection now, in the background, unless it is open or opening: a
        caller whose call runs over another connection meanwhile (a create, in a
        ``finishing()`` block) does not wait for this one at its next call. A failure is
        left to that call to report."""
        if (self._ahead is None or self._ahead.done()) and not self.channel._connected:
            self._ahead = asyncio.get_running_loop().create_task(self._connect_quietly())

    async def _connect_quietly(self) -> None:
        with suppress(Exception):
            await self.channel.__connect__()

    async def unary(
        self,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> T:
        with mapped_errors(self.endpoint, path, self.channel.why_lost):
            async with self.channel.request(
                path, Cardinality.UNARY_UNARY, type(request), response_type, timeout=timeout
            ) as stream:
                with trailers_only_status(stream):
                    await stream.send_message(request, end=True)
                    bound_reads(stream)
                    response = await stream.recv_message()
        if response is None:
            raise _no_response(self.endpoint)
        return response

    def server_stream(
        self,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> ServerStream[T]:
        return ServerStream(self, path, request, response_type, timeout)

    async def client_stream(
        self,
        path: str,
        produce: Producer,
        response_type: type[T],
        *,
        timeout: float | None = None,
    ) -> T:
        try:
            with mapped_errors(self.endpoint, path, self.channel.why_lost):
                async with self.channel.request(
                    path,
                    Cardinality.STREAM_UNARY,
                    betterproto.Message,
                    response_type,
                    timeout=timeout,
                ) as stream:
                    with trailers_only_status(stream):
                        await stream.send_request()
                        bound_reads(stream)
                        await _send_all(stream, produce)
                        try:
                            await stream.end()
                        except h2.exceptions.StreamClosedError as exc:
                            # The server answered (an error) before reading all; for a
                            # StreamTerminatedError, grpclib's __aexit__ raises that status.
                            raise StreamTerminatedError("closed by the server") from exc
                        response = await stream.recv_message()
        except _ProducerFailed as failed:
            raise failed.error from None
        if response is None:
            raise _no_response(self.endpoint)
        return response

    async def aclose(self) -> None:
        ahead, self._ahead = self._ahead, None
        try:
            if ahead is not None and not ahead.done():
                ahead.cancel()
                # Its end, not its outcome: a CancelledError here is then the caller's own.
                await asyncio.wait((ahead,))
        finally:
            await self.channel.aclose()


async def _send_all(stream: Stream[betterproto.Message, T], produce: Producer) -> None:
    """Send each message as the producer yields it (grpclib applies HTTP/2 flow control).

    The producer runs in a task of an anyio task group: a native asyncio cancellation of the
    call (``task.cancel()``, the trio bridge's) reaches it as an anyio cancellation, which
    its shielded work honours (a thread opening a file is waited for, the file then closed),
    where a native one would cut through anyio's shields.
    """
    failed: list[Exception] = []

    async def send() -> None:
        try:
            await _send_messages(stream, produce)
        except Exception as exc:  # raised below as is, not in an exception group
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
    if failed:
        raise failed[0]


async def _send_messages(stream: Stream[betterproto.Message, T], produce: Producer) -> None:
    messages = produce()
    try:
        while True:
            try:
                message = await anext(messages)
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise _ProducerFailed(exc) from exc
            await stream.send_message(message)
    finally:
        aclose = getattr(messages, "aclose", None)
        if aclose is not None:
            await aclose()


class ServerStream(Generic[T]):
    """``async with`` it to start the call; iterate it for the responses.

    Leaving the block before the server ended the stream resets the HTTP/2 stream, so the
    server's handler is cancelled.
    """

    def __init__(
        self,
        calls: GrpcCalls,
        path: str,
        request: betterproto.Message,
        response_type: type[T],
        timeout: float | None,
    ) -> None:
        self._endpoint = calls.endpoint
        self._lost = calls.channel.why_lost
        self._path = path
        self._request = request
        self._stream: Stream[betterproto.Message, T] = calls.channel.request(
            path, Cardinality.UNARY_STREAM, type(request), response_type, timeout=timeout
        )
        self._finished = False

    async def __aenter__(self) -> ServerStream[T]:
        await self._stream.__aenter__()
        try:
            with mapped_errors(self._endpoint, self._path, self._lost):
                await self._stream.send_message(self._request, end=True)
                bound_reads(self._stream)
        except BaseException as exc:
            await self._stream.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __aiter__(self) -> ServerStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        with (
            mapped_errors(self._endpoint, self._path, self._lost),
            trailers_only_status(self._stream),
        ):
            message = await self._stream.recv_message()
        if message is None:
            self._finished = True
            raise StopAsyncIteration
        return message

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            # No awaits on this path: grpclib resets the stream synchronously. The caller's
            # exception is the one that matters, so cleanup failures are dropped.
            with suppress(Exception):
                await self._stream.__aexit__(exc_type, exc, tb)
            return
        if self._finished:
            with mapped_errors(self._endpoint, self._path, self._lost):
                await self._stream.__aexit__(None, None, None)
            return
        # Left early: tell the server (RST_STREAM). Failures here are of no interest to the
        # caller, who has stopped listening.
        with suppress(Exception):
            await self._stream.cancel()
        with suppress(Exception):
            await self._stream.__aexit__(None, None, None)
