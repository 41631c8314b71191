"""Host uids for sandboxes, one each, from a configured range, shared safely between servers.

A sandbox's processes count against the per-user limits of its host uid (RLIMIT_NPROC above
all): sandboxes sharing a uid would share them, and a fork bomb in one would starve the others.
So each sandbox gets a uid of its own while it exists. A uid is taken by holding an exclusive
``flock`` on a file named for it in a directory every server of the host uses
(``/run/agentfense/uids``): a second server skips the uids the first holds, and a server that
dies releases all of its own at once. The files stay (removing one under a waiting locker
would let two servers take the same uid); they are empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path

DEFAULT_LOCK_DIR = Path("/run/agentfense/uids")


class NoUidLeft(Exception):
    """Every uid of the range is taken (by this server's sandboxes or another server's)."""


class UidPool:
    """Uids ``first`` .. ``first + count - 1``; ``take`` one, ``release`` it on destroy."""

    def __init__(self, first: int, count: int, lock_dir: Path = DEFAULT_LOCK_DIR) -> None:
        self.first = first
        self.count = count
        self._dir = lock_dir
        self._held: dict[int, int] = {}  # uid -> the fd holding its lock

    def take(self) -> int:
        """A uid no other sandbox of this host has now; :class:`NoUidLeft` when none is."""
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        start = secrets.randbelow(self.count)  # not to race another server through the same ones
        for offset in range(self.count):
            uid = self.first + (start + offset) % self.count
            if uid in self._held:
                continue
            fd = os.open(self._dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held[uid] = fd
            return uid
        raise NoUidLeft(
            f"every sandbox uid ({self.first}-{self.first + self.count - 1}) is in use on this "
            "host; destroy sandboxes or widen sandbox_uid_count"
        )

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        for uid in list(self._held):
            self.release(uid)
