"""The fs process's control channel: the server adds, commits and removes views.

One JSON message per SOCK_SEQPACKET datagram, each answered in order:
``{"op": "add_view", "id", "lower", "upper", "rules", "uid", "gid"}``,
``{"op": "commit", "id"}`` (answered with ``changed``, ``kept`` and ``over_limit``: whether
a write was refused for the view's ``max_delta`` since the last commit),
``{"op": "remove_view", "id"}``, ``{"op": "ping"}``. Errors come back as ``{"error": "..."}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from ..errors import SandboxError
from ..policy import Policy
from ..types import PermissionRule
from ._host import split
from .commit import commit
from .operations import PermissionFS
from .view import View


def _invalidate(fs: PermissionFS, source: View, changed: list[str]) -> None:
    """Drop what the kernel caches of ``changed`` in every other view of the same codebase."""
    for view in fs.views.values():
        if view is source or view.lower.root != source.lower.root:
            continue
        for rel in changed:
            node = fs.nodes.find(view, rel)
            if node is None:
                continue  # the kernel knows nothing of it there: nothing cached to drop
            parent = fs.nodes.find(view, split(rel)[0])
            with contextlib.suppress(OSError):  # the kernel may have dropped it meanwhile
                pyfuse3.invalidate_inode(node.ino, attr_only=False)
                if parent is not None:
                    pyfuse3.invalidate_entry(parent.ino, os.fsencode(split(rel)[1]))


def _fuse_device_fd() -> int | None:
    """The fd this process reads FUSE requests from (pyfuse3 does not expose it)."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                return int(name)
    return None


async def _take_queued_requests() -> None:
    """Let the FUSE loop answer the requests the kernel has already queued.

    close() (and a process's exit) returns before the kernel's RELEASE of the file is
    answered: a commit right after a command would still count the files it closed as open
    for writing and leave them in the delta, where the next commit would apply them again,
    over what other sandboxes committed meanwhile.
    """
    fd = _fuse_device_fd()
    if fd is None:
        return
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    with trio.move_on_after(1):
        while poller.poll(0):
            await trio.lowlevel.checkpoint()  # the FUSE workers read and answer


async def handle(fs: PermissionFS, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "ping":
        return {}
    view_id = str(request["id"])
    if op == "add_view":
        rules = [PermissionRule.from_value(rule) for rule in request["rules"]]
        old = fs.remove_view(view_id)
        if old is not None:
            old.close()
        fs.add_view(
            View(
                view_id,
                lower=Path(request["lower"]),
                upper=Path(request["upper"]),
                policy=Policy(rules),
                uid=int(request["uid"]),
                gid=int(request["gid"]),
                max_delta=int(request.get("max_delta", 0)),
            )
        )
        return {}
    view = fs.views.get(view_id)
    if view is None:
        return {"error": f"no view {view_id}"}
    if op == "commit":
        if view.writers:
            await _take_queued_requests()
        result = commit(view)
        if result.changed:
            # Kernel cache invalidation may wait on requests this thread serves: off-thread.
            await trio.to_thread.run_sync(_invalidate, fs, view, result.changed)
        over_limit, view.over_limit, view.delta_bytes = view.over_limit, False, 0
        return {
            "changed": len(result.changed),
            "kept": sorted(result.kept_deleted),
            "over_limit": over_limit,
        }
    if op == "remove_view":
        fs.remove_view(view_id)
        view.close()
        return {}
    return {"error": f"unknown op {op!r}"}


async def serve_control(fs: PermissionFS, sock: socket.socket) -> None:
    """Answer requests until the server closes the channel."""
    sock.setblocking(False)
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(1 << 22)
        except BlockingIOError:
            continue
        if not data:
            return
        request: dict[str, Any] = {}
        try:
            request = json.loads(data)
            reply = await handle(fs, request)
        except (OSError, SandboxError, ValueError, KeyError, TypeError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["seq"] = request.get("seq")
        await trio.lowlevel.wait_writable(sock)
        sock.send(json.dumps(reply).encode())
