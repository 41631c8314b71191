"""Replies encoded in a worker thread: a listing of 100,000 entries takes seconds to build and
encode, which on the event loop would hold every other client's call that long."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import betterproto


class Encoded:
    """A reply's bytes, sent as they are (``wire_checks``' codec passes them through)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


async def encoded_off_loop(build: Callable[[], betterproto.Message]) -> Encoded:
    """The reply ``build`` makes, built and encoded in a worker thread."""
    return Encoded(await anyio.to_thread.run_sync(lambda: bytes(build())))
