"""Writing all of some bytes to a non-blocking pipe, waiting whenever it is full."""

from __future__ import annotations

import errno
import os

import anyio


async def write_all(fd: int, data: bytes) -> bool:
    """Write ``data`` to ``fd``; False when the reader went away first (EPIPE)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await anyio.wait_writable(fd)
            continue
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                return False
            raise
        view = view[written:]
    return True
