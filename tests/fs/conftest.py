"""A real permission-filesystem process and real FUSE mounts, driven as the server does:
each view is mounted here (this process holds its connection, as the server does) and
handed to the fs process over the control channel.

Views belong to :data:`VIEW_UID`, and tests touch them as that uid (``fs.sandbox()``), as a
sandbox does: the kernel checks each open against the mode bits a view reports, for every
caller but root."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agentfense._json_messages import MAX_INT
from agentfense.fs import control
from agentfense.fs._device import mount_view, unmount
from agentfense.fs._identity import acting_as
from agentfense.fs.generation import Generation, new_fd
from agentfense.types import PermissionRule

VIEW_UID = 59999  # no user of the host


class FsProcess:
    """``python -m agentfense.fs FD`` (as the server starts it) and its control channel."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mnt = base / "mnt"
        self.work = base / "work"  # codebases (lower) and deltas of the tests
        self.log_path = base / "fs.log"
        self.mnt.mkdir()
        self.work.mkdir()
        for directory in (base, self.mnt, self.work):
            directory.chmod(0o755)  # the sandbox's uid reaches its views and codebases
        self._count = 0
        self._seq = 0
        self.fds: dict[str, int] = {}  # each view's connection, held as the server holds it
        self.generations: dict[str, Generation] = {}  # each view's, as the server reads it
        self.sock: socket.socket | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "agentfense.fs", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(theirs.fileno(),),
                )
        finally:
            theirs.close()
        self.sock = ours
        self._channel = control.channel(ours)
        ours.settimeout(60)
        ready = self._receive()
        assert isinstance(ready, control.Done), self.log()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def _receive(self) -> control.Reply:
        received = self._channel.receive()
        assert received is not None, f"the fs process closed its control channel: {self.log()}"
        return control.decode_reply(received[0])

    def exchange(self, payload: bytes) -> control.Reply:
        """Send ``payload`` as it is (whatever it holds) and read the reply."""
        self._channel.send(payload)
        return self._receive()

    def request(self, message: control.Request, fds: tuple[int, ...] = ()) -> control.Reply:
        self._channel.send(message.encode(), fds)
        reply = self._receive()
        assert not isinstance(reply, control.Failed), f"{message.op}: {reply}; {self.log()}"
        return reply

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def sandbox(self) -> contextlib.AbstractContextManager[None]:
        """File accesses of this thread as the views' sandbox makes them."""
        return acting_as(VIEW_UID, VIEW_UID)

    def new_id(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def spec(
        self, view_id: str, lower: Path, rules: Sequence[PermissionRule], **extra: Any
    ) -> control.AddView:
        return control.AddView(
            id=view_id,
            lower=str(lower),
            delta=str(self.delta(view_id)),
            rules=tuple(rules),
            uid=VIEW_UID,
            gid=VIEW_UID,
            seq=self._next_seq(),
            **extra,
        )

    def add_view(
        self, view_id: str, lower: Path, rules: Sequence[PermissionRule], **extra: Any
    ) -> Path:
        """Mount a view of ``lower`` and have it served; its path."""
        mountpoint = self.mnt / view_id
        mountpoint.mkdir()
        fd = mount_view(mountpoint)
        self.fds[view_id] = fd
        generation_fd = new_fd()
        try:
            self.generations[view_id] = Generation(generation_fd)
            self.request(self.spec(view_id, lower, rules, **extra), (fd, generation_fd))
        finally:
            os.close(generation_fd)
        return mountpoint

    def delta(self, view_id: str) -> Path:
        return self.work / f"{view_id}.delta"

    def upper(self, view_id: str) -> Path:
        """The view's delta: what it wrote since its last commit."""
        return self.delta(view_id) / "upper"

    def commit(self, view_id: str) -> control.Committed:
        reply = self.request(control.Commit(view_id, seq=self._next_seq()))
        assert isinstance(reply, control.Committed)
        return reply

    def changes(
        self, view_id: str, paths: tuple[str, ...] | None = None
    ) -> tuple[control.ChangeEntry, ...]:
        reply = self.request(control.ListChanges(view_id, paths, seq=self._next_seq()))
        assert isinstance(reply, control.Changes)
        assert reply.total == len(reply.changes)
        return reply.changes

    def apply(
        self, view_id: str, paths: tuple[str, ...] | None = None, *, overwrite: bool = False
    ) -> control.Committed:
        reply = self.request(control.Apply(view_id, paths, overwrite, seq=self._next_seq()))
        assert isinstance(reply, control.Committed)
        return reply

    def discard(self, view_id: str, paths: tuple[str, ...] | None = None) -> control.Committed:
        reply = self.request(control.Discard(view_id, paths, seq=self._next_seq()))
        assert isinstance(reply, control.Committed)
        return reply

    def capture(
        self, view_id: str, target: Path, most: tuple[int, int] = (MAX_INT, MAX_INT)
    ) -> control.Captured:
        """Copy the view's layer into ``target`` (``most``: inodes and bytes it may take)."""
        message = control.Capture(view_id, str(target), *most, seq=self._next_seq())
        reply = self.request(message)
        assert isinstance(reply, control.Captured)
        return reply

    def restore(self, view_id: str, source: Path) -> None:
        self.request(control.Restore(view_id, str(source), seq=self._next_seq()))

    def remove_view(self, view_id: str) -> None:
        self.request(control.RemoveView(view_id, seq=self._next_seq()))
        unmount(self.mnt / view_id)
        os.close(self.fds.pop(view_id))
        self.generations.pop(view_id).close()
        (self.mnt / view_id).rmdir()
        shutil.rmtree(self.delta(view_id), ignore_errors=True)

    def check_alive(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, f"the fs process died: {self.log()}"

    def stop(self) -> int:
        """Close the control channel (the process stops serving and exits); its exit code."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        assert self.process is not None
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def close(self) -> None:
        self.stop()
        for view_id, fd in list(self.fds.items()):
            unmount(self.mnt / view_id)
            os.close(fd)
        self.fds.clear()
        for generation in self.generations.values():
            generation.close()
        self.generations.clear()


@pytest.fixture(scope="module")
def fs() -> Iterator[FsProcess]:
    """One fs process for a test module; it must exit cleanly when its channel closes."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    # Not under pytest's temporary directory: the views' uid must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="agentfense-fs-test-", dir="/tmp"))
    running = FsProcess(base)
    try:
        yield running
        running.check_alive()
        assert "Traceback" not in running.log(), running.log()  # a handler crashed: EIO
        assert running.stop() == 0, running.log()
    finally:
        running.close()
        shutil.rmtree(base, ignore_errors=True)
