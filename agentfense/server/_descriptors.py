"""The server's file descriptors: as many as the host allows, and a reserve no one sandbox
can take.

Every session holds a few of the server's descriptors for its life (its shell's pipes; on
Docker its exec's socket and a pid fd too), every running sandbox a few. When they run out,
whatever needs one next fails: a command of another sandbox, an accept(). So the server
raises its own limit to the hard one at start, and what holds descriptors for long (a new
session, a sandbox's start) is refused with RESOURCE_EXHAUSTED while fewer than
``reserve()`` are left, which keeps room for the commands, file operations and connections
of everyone else.
"""

from __future__ import annotations

import errno
import os
import resource

from ..errors import ResourceLimitExceededError


def raise_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def reserve(limit: int) -> int:
    """The descriptors kept for short-lived work: an eighth, at least 64, at most 4,096."""
    return min(max(limit // 8, 64), 4096)


def check_headroom(what: str) -> None:
    """Refuse ``what`` (something that holds descriptors for long) when the server has no
    more than its reserve left."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError as exc:  # (EMFILE: listing takes a descriptor, and none is left)
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        in_use = limit
    if limit - in_use <= reserve(limit):
        raise ResourceLimitExceededError(
            f"{what}: the server has {limit - in_use} of its {limit} file descriptors left, "
            "which it keeps for commands and connections; close sessions or stop sandboxes"
        )
