"""The lock every writer of a codebase's files holds while it changes them: a commit of the
fs process (from its check of what the codebase holds to its last rename: two views checking
at once would each find the other's files not there yet and throw them away unreported) and
an upload of the server (its directories and its rename into place). Without it, an upload
landing between a manual commit's check and its rename was overwritten, and the commit said
it had applied the path with no conflict. It is an flock of the codebase's files directory: it
holds between processes, and goes with a process that dies holding it. The fs process
waits for it (:func:`writing`); the server tries for it (:func:`try_writing`) and waits on
its event loop, never in a worker thread that others need (a commit may hold it seconds)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def writing(files_dir: Path) -> Iterator[None]:
    """Hold the lock of the codebase whose files are ``files_dir`` (waits for it; two threads
    of one process exclude each other too: each holds an open file of its own)."""
    fd = os.open(files_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (the lock goes with it)


def try_writing(files_dir: Path) -> int | None:
    """The lock of the codebase whose files are ``files_dir``, held by the fd returned (close
    it to let go); None when another holds it (FileNotFoundError: no such codebase)."""
    fd = os.open(files_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
