"""The largest request message the server takes (grpclib has no such setting).

grpclib reads a message's 5-byte prefix, then buffers the whole length it announces (up to
4 GiB) before anything looks at it. Here the read of a message body longer than the limit is
refused before a byte of it is buffered: the call ends with RESOURCE_EXHAUSTED and a sentence
naming the limit. Streams (uploads) are unaffected as long as each of their messages fits.
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


def _bounded(func: Callable[[Any], Awaitable[None]], most: int) -> Callable[[Any], Awaitable[None]]:
    async def handler(stream: Any) -> None:
        stream._stream = _BoundedReads(stream._stream, most)  # grpclib's server Stream
        await func(stream)

    return handler


class MessageLimit:
    """``service`` (a grpclib handler object) with request messages of at most ``most`` bytes."""

    def __init__(self, service: Any, most: int) -> None:
        self._service = service
        self._most = most

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = self._service.__mapping__()
        return {
            name: grpclib.const.Handler(
                _bounded(h.func, self._most), h.cardinality, h.request_type, h.reply_type
            )
            for name, h in mapping.items()
        }
