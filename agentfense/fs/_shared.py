"""The upper files a view shares with a checkpoint or a fork (a manual view's): their inode
numbers. A checkpoint or a fork links the view's files rather than copying them (creating a
file costs a disk far more than a name); the view then copies such a file before it changes it
in place (``View.copy_up``), so what was captured never changes. A file no longer linked
elsewhere (its checkpoint deleted) needs no copy: the link count says so.

Kept in memory, and appended to a log beside the delta (a view taken over still knows them).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable
from pathlib import Path

from ._appendlog import AppendLog

_INODE = struct.Struct("<Q")


class Shared:
    def __init__(self, path: Path) -> None:
        self._log = AppendLog(path)
        data = self._log.read()
        whole = len(data) - len(data) % _INODE.size
        self.inodes: set[int] = {ino for (ino,) in _INODE.iter_unpack(data[:whole])}

    def needs_copy(self, st: os.stat_result) -> bool:
        """Whether the upper file of ``st`` is still linked into a checkpoint or a fork."""
        if st.st_ino not in self.inodes or not stat.S_ISREG(st.st_mode):
            return False
        if st.st_nlink > 1:
            return True
        self.inodes.discard(st.st_ino)  # (its checkpoint is gone: the file is ours alone)
        return False

    def add(self, inodes: Iterable[int]) -> None:
        new = [ino for ino in inodes if ino not in self.inodes]
        if new:
            self._log.append(b"".join(_INODE.pack(ino) for ino in new))
            self.inodes.update(new)

    def ensure(self, *, removing: bool = False) -> None:
        self._log.ensure(removing=removing)

    def close(self) -> None:
        self._log.close()
