"""Acting as a sandbox's uid for file access, in one thread.

The views are mounted with ``default_permissions``: the kernel checks every open against the
owner and mode bits that express each path's level, for every caller but root (whose
capabilities override modes). So whoever opens files in a view on a sandbox's behalf (the
sandbox file API) does it with the sandbox's filesystem uid and gid: Linux keeps these per
thread, and changing them away from 0 drops the thread's file capabilities until they are
changed back.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

_libc = ctypes.CDLL(None, use_errno=True)
_QUERY = 0xFFFFFFFF  # an invalid id: the call changes nothing and returns the current one


@contextlib.contextmanager
def acting_as(uid: int, gid: int) -> Iterator[None]:
    """This thread's file accesses made as ``uid``/``gid`` (only root can switch; anyone
    else already is who they are)."""
    if os.geteuid() != 0:
        yield
        return
    old_gid = _libc.setfsgid(gid)
    old_uid = _libc.setfsuid(uid)
    if _libc.setfsuid(_QUERY) != uid or _libc.setfsgid(_QUERY) != gid:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)
        raise OSError(f"cannot act as uid {uid}")
    try:
        yield
    finally:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)
