"""A view's generation: how many requests that may change it the fs process has taken, in
eight bytes of memory it shares with the server (a memfd the server makes and passes along
with ``AddView``).

The view's thread counts each such request (anything but a read, a lookup, a listing...)
before it answers it, so once a command has ended every change it made is counted. The
server reads the count then, and skips the commit when nothing was taken since the last
commit that left nothing behind: most commands only read, and a commit is a round trip to
the fs process. Requests still in flight (a process the command left running writes on) may
or may not be counted yet, exactly as a commit may or may not see them: the next commit
does.

Only the view's thread writes the count; an aligned eight-byte store and load are single
instructions on the architectures the server runs on (x86_64, aarch64).
"""

from __future__ import annotations

import mmap
import os
import struct

SIZE = 8
_COUNT = struct.Struct("=Q")


def new_fd() -> int:
    """A memfd holding a count of 0, for a new view."""
    fd = os.memfd_create("agentfense-view-generation", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, SIZE)
    except OSError:
        os.close(fd)
        raise
    return fd


class Generation:
    """The count in the memfd ``fd`` (mapped: the fd may be closed after)."""

    __slots__ = ("_map",)

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, SIZE)

    def bump(self) -> None:
        """One more request that may change the view (its thread only)."""
        _COUNT.pack_into(self._map, 0, _COUNT.unpack_from(self._map)[0] + 1)

    def read(self) -> int:
        return int(_COUNT.unpack_from(self._map)[0])

    def close(self) -> None:
        self._map.close()
