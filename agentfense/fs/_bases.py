"""What the codebase held at each path when a view first changed it: the base a manual commit
checks for conflicts (``fs/review.py``).

A view under review (``commit="manual"``) writes down, the first time it changes a path
(copies it up, or hides the codebase's entry there), the codebase's entry at that path: its
type, inode, size, mtime and mode, or that there was none. A path never written down had
nothing there when the view first changed it: a view only makes a name the codebase lacks
(anything else it copies up or hides first). At a commit, a path whose codebase entry no
longer matches its base was changed underneath: a conflict.

Kept in memory, and appended to a log beside the delta so that a view taken over after the fs
process died still knows them (the same format of record as the deletions' log).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable
from pathlib import Path

from ._appendlog import AppendLog

Signature = tuple[int, int, int, int, int]  # type, inode, size, mtime (ns), permission bits
ABSENT: Signature = (0, 0, 0, 0, 0)


def signature(st: os.stat_result | None) -> Signature:
    """What identifies a codebase entry's content: a commit or an upload renames a new inode
    into place (a new inode, or new size and mtime); a hard link made to it (a view keeping
    a removed file for a process holding it open) changes none of these."""
    if st is None:
        return ABSENT
    mode = st.st_mode
    return (stat.S_IFMT(mode), st.st_ino, st.st_size, st.st_mtime_ns, stat.S_IMODE(mode))


def same_type(a: Signature, b: Signature) -> bool:
    return a[0] == b[0]


class Bases:
    _RECORD = struct.Struct("<IIQqqI")  # path length, type, inode, size, mtime, mode

    def __init__(self, path: Path) -> None:
        self._log = AppendLog(path)
        self.paths: dict[str, Signature] = dict(self._decode(self._log.read()))

    def _decode(self, data: bytes) -> Iterable[tuple[str, Signature]]:
        at, size = 0, self._RECORD.size
        while at + size <= len(data):
            length, kind, ino, length_of_file, mtime, mode = self._RECORD.unpack_from(data, at)
            at += size
            if at + length > len(data):
                return
            yield os.fsdecode(data[at : at + length]), (kind, ino, length_of_file, mtime, mode)
            at += length

    def _encode(self, rel: str, base: Signature) -> bytes:
        raw = os.fsencode(rel)
        return self._RECORD.pack(len(raw), *base) + raw

    def ensure(self, *, removing: bool = False) -> None:
        """Room for one request's notes (ENOSPC before anything changes, when none)."""
        self._log.ensure(removing=removing)

    def get(self, rel: str) -> Signature:
        return self.paths.get(rel, ABSENT)

    def note(self, rel: str, st: os.stat_result | None) -> None:
        """``rel`` is changed for the first time: the codebase's entry there is its base (a
        later change keeps the first base)."""
        if rel not in self.paths and st is not None:  # (absent needs no record)
            base = signature(st)
            self._log.append(self._encode(rel, base))
            self.paths[rel] = base

    def keep_only(self, keep: Iterable[str]) -> None:
        """Forget every base but those of ``keep`` (after a commit or a discard)."""
        kept = {rel: self.paths[rel] for rel in keep if rel in self.paths}
        if len(kept) != len(self.paths):
            self.replace(kept)

    def replace(self, paths: dict[str, Signature]) -> None:
        """These bases from now on (the log rewritten whole first)."""
        records = (self._encode(rel, base) for rel, base in sorted(paths.items()))
        self._log.replace(b"".join(records))
        self.paths = dict(paths)

    def close(self) -> None:
        self._log.close()
