"""What every request message must be before a handler sees it: small enough, and decodable.

* Size: grpclib has no maximum. It reads a message's 5-byte prefix, then buffers the whole
  length it announces (up to 4 GiB) before anything looks at it. Here the read of a message
  body longer than ``max_message_bytes`` is refused before a byte of it is buffered:
  RESOURCE_EXHAUSTED with a sentence naming the limit. Streams (uploads) are unaffected as
  long as each of their messages fits.
* Decoding: a message whose bytes do not decode (a string that is not UTF-8, a duration past
  what a ``timedelta`` holds, a truncated field) is the client's error, INVALID_ARGUMENT with
  a sentence, not an INTERNAL one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const
from grpclib.exceptions import GRPCError

_PREFIX = 5  # a message's compression flag and length, read before its body


class _BoundedReads:
    """A grpclib protocol stream whose ``recv_data`` refuses a message body over the limit."""

    def __init__(self, inner: Any, most: int) -> None:
        self._inner = inner
        self._most = most

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def recv_data(self, size: int) -> bytes:
        if size > self._most and size != _PREFIX:
            raise GRPCError(
                grpclib.const.Status.RESOURCE_EXHAUSTED,
                f"a request message of {size} bytes is larger than this server accepts "
                f"({self._most} bytes, max_message_bytes); send large content in chunks",
            )
        data: bytes = await self._inner.recv_data(size)
        return data


def _checked(
    func: Callable[[Any], Awaitable[None]], most: int, type_name: str
) -> Callable[[Any], Awaitable[None]]:
    async def handler(stream: Any) -> None:
        stream._stream = _BoundedReads(stream._stream, most)  # grpclib's server Stream
        receive = stream.recv_message

        async def recv_message() -> Any:
            try:
                return await receive()
            except (ValueError, OverflowError, IndexError, TypeError) as exc:
                raise GRPCError(
                    grpclib.const.Status.INVALID_ARGUMENT,
                    f"the request is not a valid {type_name} message: {exc}"[:500],
                ) from None

        stream.recv_message = recv_message  # (what iterating the stream calls too)
        await func(stream)

    return handler


class WireChecks:
    """``service`` (a grpclib handler object) with request messages of at most ``most`` bytes
    that decode."""

    def __init__(self, service: Any, most: int) -> None:
        self._service = service
        self._most = most

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = self._service.__mapping__()
        return {
            name: grpclib.const.Handler(
                _checked(h.func, self._most, h.request_type.__name__),
                h.cardinality,
                h.request_type,
                h.reply_type,
            )
            for name, h in mapping.items()
        }
