"""An append-only file whose next appends have their room on disk reserved beforehand.

A view writes down what it changes (its node table, its deletions) before it answers. On a
full disk that write-down would fail after the change was made; so a request that may write
down anything first makes sure room is reserved for it (``fallocate`` with KEEP_SIZE: blocks
held, size unchanged), and is refused with ENOSPC, before it changes anything, when there is
none. Some room is kept for removals, so that a sandbox can free room on a full disk.
Appends are then whole; a rewrite (compaction) replaces the file only once complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from pathlib import Path

_FALLOC_FL_KEEP_SIZE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
RESERVE = 1 << 20  # reserved at a time
ROOM = 256 * 1024  # what one request may append at most, with room to spare
# Kept for requests that remove (and so may free room): on a full disk, removing still works
# after everything else is refused.
SPARE = 256 * 1024


class AppendLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self._fd).st_size
        self._reserved = self.size

    def read(self) -> bytes:
        with contextlib.suppress(FileNotFoundError):
            return self.path.read_bytes()
        return b""

    def ensure(self, *, removing: bool = False) -> None:
        """Room for one request's appends is reserved (ENOSPC when the disk has none); a
        request that removes may use the spare room the others leave."""
        if self._reserved - self.size >= ROOM + (0 if removing else SPARE):
            return
        if _fallocate(self._fd, _FALLOC_FL_KEEP_SIZE, self.size, RESERVE) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS):  # (then: as the disk allows)
                raise OSError(err, os.strerror(err), str(self.path))
        self._reserved = self.size + RESERVE

    def append(self, data: bytes) -> None:
        """Append ``data`` whole, or not at all."""
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(self._fd, data[done:], self.size + done)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)

    def replace(self, data: bytes) -> None:
        """The file is ``data`` from now on (written aside, then renamed over it)."""
        temporary = self.path.with_name(self.path.name + ".new")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as out:
                out.write(data)
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        os.close(self._fd)
        self._fd = fd
        self.size = self._reserved = len(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
