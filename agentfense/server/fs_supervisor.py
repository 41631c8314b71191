"""Runs the permission filesystem process and talks to it; restarts it if it dies.

The fs process (``python -m agentfense.fs``) mounts one FUSE file system under the state
directory; each sandbox's view is the subdirectory named by its id. If the process dies, the
mounts that sandboxes hold are dead: ``on_crash`` is told (the manager puts the running
sandboxes into ERROR), then a new process is started and every view is added again from its
delta on disk, so nothing committed, and nothing written but uncommitted, is lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from ..errors import SandboxError, StatusCode

log = logging.getLogger("agentfense.server.fs")


def _mounted(path: Path) -> bool:
    """Whether something is mounted on ``path`` (also a dead FUSE mount, which stat fails on)."""
    target = str(path).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
    with open("/proc/self/mounts") as mounts:
        return any(line.split(" ")[1] == target for line in mounts)


def _unmount(path: Path) -> None:
    if _mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


class FsSupervisor:
    def __init__(
        self,
        state_dir: Path,
        *,
        views: Callable[[], Iterable[dict[str, Any]]],
        on_crash: Callable[[], Awaitable[None]],
    ) -> None:
        self.mountpoint = state_dir / "fs" / "mnt"
        self._log_path = state_dir / "logs" / "fs.log"
        self._views = views
        self._on_crash = on_crash
        self._process: anyio.abc.Process | None = None
        self._sock: socket.socket | None = None
        self._lock = anyio.Lock()
        self._stopping = False
        self._seq = 0
        self._ready = anyio.Event()  # set while a process serves every view

    def view_path(self, view_id: str) -> Path:
        return self.mountpoint / view_id

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        await self._launch()
        task_group.start_soon(self._watch, task_group)

    async def _launch(self) -> None:
        _unmount(self.mountpoint)  # left by a process that died (stat fails on it)
        for directory in (self.mountpoint.parent.parent, self.mountpoint.parent):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o711)  # sandboxes reach their view; nothing here can be listed
        self.mountpoint.mkdir(exist_ok=True)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._log_path.open("ab") as log_file:
                self._process = await anyio.open_process(
                    [
                        sys.executable,
                        "-m",
                        "agentfense.fs",
                        str(self.mountpoint),
                        str(theirs.fileno()),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    pass_fds=(theirs.fileno(),),
                )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        with anyio.fail_after(30):
            ready = await self._receive()
        if not ready.get("ready"):
            raise SandboxError(
                f"the permission filesystem did not start: {self._log_tail()}",
                code=StatusCode.INTERNAL,
            )
        for view in self._views():
            await self._request(op="add_view", **view)
        self._ready.set()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self._log_path.read_text(errors="replace").strip()[-2000:]
        return ""

    async def _receive(self) -> dict[str, Any]:
        assert self._sock is not None
        while True:
            await anyio.wait_readable(self._sock)
            try:
                data = self._sock.recv(1 << 22)
            except BlockingIOError:
                continue
            if not data:
                raise SandboxError("the permission filesystem stopped", code=StatusCode.UNAVAILABLE)
            reply: dict[str, Any] = json.loads(data)
            return reply

    async def wait_ready(self) -> None:
        """Wait while the process is being replaced (its views are added again)."""
        if not self._ready.is_set():
            with anyio.move_on_after(60):
                await self._ready.wait()
            if not self._ready.is_set():
                raise SandboxError(
                    "the permission filesystem is restarting; try again",
                    code=StatusCode.UNAVAILABLE,
                )

    async def request(self, **message: Any) -> dict[str, Any]:
        """Send one request and return its answer (requests are answered one at a time)."""
        await self.wait_ready()
        return await self._request(**message)

    async def _request(self, **message: Any) -> dict[str, Any]:
        async with self._lock:
            if self._sock is None:
                raise SandboxError(
                    "the permission filesystem is not running", code=StatusCode.UNAVAILABLE
                )
            self._seq += 1
            message["seq"] = self._seq
            with anyio.CancelScope(shield=True):  # a reply must never be left for the next
                await anyio.wait_writable(self._sock)
                self._sock.send(json.dumps(message).encode())
                reply = await self._receive()
        if "error" in reply:
            raise SandboxError(f"permission filesystem: {reply['error']}", code=StatusCode.INTERNAL)
        return reply

    async def _watch(self, task_group: anyio.abc.TaskGroup) -> None:
        while not self._stopping:
            process = self._process
            assert process is not None
            await process.wait()
            if self._stopping:
                return
            log.error(
                "the permission filesystem exited (%s); restarting it: %s",
                process.returncode,
                self._log_tail(),
            )
            self._ready = anyio.Event()
            async with self._lock:  # no request is between its question and its answer
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
            await self._on_crash()
            try:
                await self._launch()
            except SandboxError:
                if self._stopping:
                    return
                raise

    async def stop(self) -> None:
        self._stopping = True
        with anyio.CancelScope(shield=True):
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
            if self._process is not None:
                with anyio.move_on_after(10):
                    await self._process.wait()
                if self._process.returncode is None:
                    self._process.kill()
                    await self._process.wait()
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            _unmount(self.mountpoint)
