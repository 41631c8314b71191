"""The runtimes' side of ``raw_sockets.c``: the listener of a command's raw-socket filter, made
by a helper in the sandbox, taken by the server (``server/network/raw_sockets.py`` answers
it).

bwrap's launcher sends it over a socket the server passes (``_held.py``). Docker's confine
loads the filter before it runs the gate and leaves its listener at ``DOCKER_FD``, which the
server takes with ``pidfd_getfd`` while confine waits for the go (``_docker_exec.py``);
confine then closes it, and nothing of the image (its shell) ever holds it.
"""

from __future__ import annotations

import ctypes
import errno
import os

DOCKER_FD = 9  # (confine.c's WATCH_FD)
_PIDFD_GETFD = 438  # (the same number on x86_64 and aarch64)
_libc = ctypes.CDLL(None, use_errno=True)


def is_seccomp_listener(fd: int) -> bool:
    """Whether ``fd`` (ours) is a seccomp filter's listener."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:seccomp notify"
    except OSError:
        return False


def take_fd(pidfd: int, fd: int) -> int:
    """A copy of the process's ``fd`` (``pidfd_getfd``); OSError (EBADF: it has none yet)."""
    taken = int(_libc.syscall(_PIDFD_GETFD, pidfd, fd, 0))
    if taken < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return taken


def take_listener(pidfd: int) -> int | None:
    """The listener confine left at ``DOCKER_FD`` in the process of ``pidfd``; None when it has
    none there yet (the caller tries again) or never will."""
    try:
        taken = take_fd(pidfd, DOCKER_FD)
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ESRCH):
            return None
        raise
    if is_seccomp_listener(taken):
        return taken
    os.close(taken)
    return None
