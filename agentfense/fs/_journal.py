"""What the kernel knows of a view's nodes, kept on disk so that a new fs process can go on.

The kernel addresses a view's files by node ids it learnt from the fs process; those ids live
as long as the kernel holds them, longer than an fs process that is killed. Every change of
the node table is appended here before the kernel hears of it, so a process that takes over
the view rebuilds the table by replaying this file. When it has grown well beyond what it
describes, it is rewritten whole (write a new file, rename it over).

Records (little-endian): ``N id len path`` a node at a path; ``S id len orphan`` a node whose
path is gone (with the name of the file that keeps its content, if any); ``F id`` a node
dropped; ``R len old len new`` everything at ``old`` and below moved to ``new``. Replay
stops at the first incomplete record (a write cut short by a full disk).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._appendlog import AppendLog

_ID = struct.Struct("<Q")
_LEN = struct.Struct("<I")
COMPACT_AT = 1 << 20  # bytes; and more than twice what a rewrite would take


@dataclass(frozen=True, slots=True)
class New:
    id: int
    rel: str


@dataclass(frozen=True, slots=True)
class Stale:
    id: int
    orphan: str


@dataclass(frozen=True, slots=True)
class Dropped:
    id: int


@dataclass(frozen=True, slots=True)
class Moved:
    old: str
    new: str


Record = New | Stale | Dropped | Moved


def _text(value: str) -> bytes:
    raw = os.fsencode(value)
    return _LEN.pack(len(raw)) + raw


def encode(record: Record) -> bytes:
    if isinstance(record, New):
        return b"N" + _ID.pack(record.id) + _text(record.rel)
    if isinstance(record, Stale):
        return b"S" + _ID.pack(record.id) + _text(record.orphan)
    if isinstance(record, Dropped):
        return b"F" + _ID.pack(record.id)
    return b"R" + _text(record.old) + _text(record.new)


def decode(data: bytes) -> Iterator[Record]:
    """The complete records of ``data``, in order."""
    view = memoryview(data)
    at = 0

    def text() -> str:
        nonlocal at
        (length,) = _LEN.unpack_from(view, at)
        start = at + _LEN.size
        if start + length > len(view):
            raise struct.error("cut short")
        at = start + length
        return os.fsdecode(bytes(view[start:at]))

    def ident() -> int:
        nonlocal at
        (value,) = _ID.unpack_from(view, at)
        at += _ID.size
        return int(value)

    while at < len(view):
        kind = bytes(view[at : at + 1])
        at += 1
        try:
            if kind == b"N":
                yield New(ident(), text())
            elif kind == b"S":
                yield Stale(ident(), text())
            elif kind == b"F":
                yield Dropped(ident())
            elif kind == b"R":
                yield Moved(text(), text())
            else:
                return
        except struct.error:
            return


class Journal:
    """The append-only file of one view's node table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[bytes] = []
        self._log = AppendLog(path)

    @property
    def size(self) -> int:
        return self._log.size

    def read(self) -> bytes:
        return self._log.read()

    def ensure(self, *, removing: bool = False) -> None:
        """Room for one request's records (ENOSPC before anything changes, when none)."""
        self._log.ensure(removing=removing)

    def add(self, record: Record) -> None:
        self._pending.append(encode(record))

    def flush(self) -> None:
        """Write what was added, whole; called before the kernel hears of it (a reply).
        On failure nothing is written, and it stays to be written next time."""
        if not self._pending:
            return
        self._log.append(b"".join(self._pending))
        self._pending.clear()

    def due(self, live: int) -> bool:
        """Whether the file has grown well beyond ``live`` bytes, what it describes."""
        return self.size > COMPACT_AT and self.size > 2 * live

    def rewrite(self, records: Iterator[Record]) -> None:
        """Replace the file by ``records`` (the table as it stands, pending records in it)."""
        self._log.replace(b"".join(encode(record) for record in records))
        self._pending.clear()

    def close(self) -> None:
        self._log.close()
