"""A grpclib stream that refuses a message longer than a limit before buffering it.

grpclib reads a message's 5-byte prefix, then buffers the whole length it announces, up to
4 GiB, before anything looks at it, and it has no setting for less. Both ends bound it here:
the SDK the responses it takes, the server the requests (``max_message_bytes``), each with an
error of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PREFIX = 5  # a message's compression flag and length, read before its body


class BoundedReads:
    """Wraps grpclib's protocol stream: a ``recv_data`` of a body over ``most`` bytes raises
    ``refuse(size)`` before a byte of it is read."""

    def __init__(self, inner: Any, most: int, refuse: Callable[[int], BaseException]) -> None:
        self._inner = inner
        self._most = most
        self._refuse = refuse

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def recv_data(self, size: int) -> bytes:
        if size > self._most and size != PREFIX:
            raise self._refuse(size)
        data: bytes = await self._inner.recv_data(size)
        return data
