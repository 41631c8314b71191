"""Replies encoded in a worker thread: a listing of 100,000 entries takes seconds to build and
encode, which on the event loop would hold every other client's call that long.

Encoded one entry at a time: betterproto's compiled codec holds the GIL through a call, so one
call over 30,000 entries would hold the event loop for a second even from a thread; between
small calls the loop gets its turn. A message's bytes are its fields' records one after the
other, so the records of a repeated field can be made separately and joined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio
import betterproto


class Encoded:
    """A reply's bytes, sent as they are (``wire_checks``' codec passes them through), and
    the ``id`` of what it describes, if anything (the audit log records what a create made)."""

    __slots__ = ("data", "id")

    def __init__(self, data: bytes, id: str = "") -> None:
        self.data = data
        self.id = id


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def repeated_field(number: int, items: Iterable[betterproto.Message]) -> bytes:
    """The bytes of a message whose only field is the repeated message field ``number``
    holding ``items``, each encoded on its own."""
    key = _varint(number << 3 | 2)
    parts = []
    for item in items:
        data = bytes(item)
        parts.append(key + _varint(len(data)) + data)
    return b"".join(parts)


async def encoded_off_loop(encode: Callable[[], bytes]) -> Encoded:
    """The reply ``encode`` makes, made in a worker thread."""
    return Encoded(await anyio.to_thread.run_sync(encode))
