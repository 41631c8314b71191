"""Decoding a message whose repeated field is usually the same as in earlier messages.

Every ``Sandbox`` message carries its permission rules (47 for the ``agent-safe`` preset), and
a client gets one with each create, start, stop and get: betterproto builds a Python object
per rule, which costs more than all the rest of the message (about 5 ms against 0.3 ms).
The rules of one sandbox never change, and most sandboxes share a preset's. So the field's
records are cut out of the message's bytes (:func:`split_field`, which reads only the
top-level keys), the rest is decoded, and the rules are decoded once per distinct run of
bytes and kept (a bounded table; each message gets a list of its own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

MOST = 64  # distinct runs of records kept
MOST_BYTES = 64 * 1024  # the longest run kept (a preset's rules are ~2 KiB): 4 MiB in all


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at ``data[i]`` and the index after it; ``(-1, i)`` past its end or 64 bits."""
    value = shift = 0
    while i < len(data) and shift < 64:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
    return -1, i


def split_field(data: bytes, number: int) -> tuple[bytes, bytes] | None:
    """``(the message without field number, that field's records)`` in their order; None when
    the bytes do not scan as a message (the decoder then says what is wrong)."""
    rest: list[bytes] = []
    records: list[bytes] = []
    i = 0
    while i < len(data):
        start = i
        key, i = read_varint(data, i)
        if key < 0:
            return None
        wire_type = key & 7
        if wire_type == 0:
            value, i = read_varint(data, i)
            if value < 0:
                return None
        elif wire_type == 1:
            i += 8
        elif wire_type == 2:
            length, i = read_varint(data, i)
            if length < 0:
                return None
            i += length
        elif wire_type == 5:
            i += 4
        else:
            return None
        if i > len(data):
            return None
        (records if key >> 3 == number else rest).append(data[start:i])
    return b"".join(rest), b"".join(records)


class RepeatedMemo:
    """Decodes messages of one type, their repeated field ``name`` (number ``number``) kept
    per distinct run of bytes."""

    def __init__(self, number: int, name: str) -> None:
        self._number = number
        self._name = name
        self._kept: dict[bytes, list[Any]] = {}
        self._lock = threading.Lock()  # (the server decodes large requests in threads)

    def decode(
        self,
        data: bytes,
        decode: Callable[[bytes], Any],
        check: Callable[[bytes], None] = lambda data: None,
    ) -> Any:
        """The message in ``data``, as ``decode`` makes it (which raises on bad bytes).
        ``check`` (which raises on bytes it refuses) is given the bytes first: all of them,
        or, when the field's records are some already kept (checked when first seen), the
        rest of the message only."""
        split = split_field(data, self._number)
        if split is None or not split[1]:
            check(data)
            return decode(data)
        rest, records = split
        with self._lock:
            items = self._kept.get(records)
        check(data if items is None else rest)
        message = decode(rest)
        if items is None:
            items = list(getattr(decode(records), self._name))
            if len(records) > MOST_BYTES:  # (a client's 4,096 rules: decoded, not kept)
                setattr(message, self._name, items)
                return message
            with self._lock:
                if len(self._kept) >= MOST:
                    del self._kept[next(iter(self._kept))]  # the oldest
                self._kept[records] = items
        setattr(message, self._name, list(items))
        return message
