"""A real permission-filesystem process and its real FUSE mount, driven as the server does."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agentfense.types import PermissionRule


class FsProcess:
    """``python -m agentfense.fs MNT FD`` (as FsSupervisor starts it) and its control socket."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mnt = base / "mnt"
        self.work = base / "work"  # codebases (lower) and deltas (upper) of the tests
        self.log_path = base / "fs.log"
        self.mnt.mkdir()
        self.work.mkdir()
        self._count = 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "agentfense.fs", str(self.mnt), str(theirs.fileno())],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(theirs.fileno(),),
                )
        finally:
            theirs.close()
        self.sock: socket.socket | None = ours
        ours.settimeout(30)
        ready = self._receive()
        assert ready.get("ready"), self.log()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def _receive(self) -> dict[str, Any]:
        assert self.sock is not None
        data = self.sock.recv(1 << 22)
        assert data, f"the fs process closed its control socket: {self.log()}"
        reply: dict[str, Any] = json.loads(data)
        return reply

    def request(self, **message: Any) -> dict[str, Any]:
        assert self.sock is not None
        self.sock.send(json.dumps(message).encode())
        reply = self._receive()
        assert "error" not in reply, f"{message.get('op')}: {reply['error']}; {self.log()}"
        return reply

    def new_id(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def add_view(self, view_id: str, lower: Path, rules: Sequence[PermissionRule]) -> Path:
        """Add a view of ``lower`` (its delta under ``work``); its path in the mount."""
        self.request(
            op="add_view",
            id=view_id,
            lower=str(lower),
            upper=str(self.upper(view_id)),
            rules=[rule.to_dict() for rule in rules],
            uid=0,
            gid=0,
        )
        return self.mnt / view_id

    def upper(self, view_id: str) -> Path:
        """The view's delta: what it wrote since its last commit."""
        return self.work / f"{view_id}.delta" / "upper"

    def commit(self, view_id: str) -> dict[str, Any]:
        return self.request(op="commit", id=view_id)

    def remove_view(self, view_id: str) -> None:
        self.request(op="remove_view", id=view_id)
        shutil.rmtree(self.work / f"{view_id}.delta", ignore_errors=True)

    def check_alive(self) -> None:
        assert self.process.poll() is None, f"the fs process died: {self.log()}"

    def close(self) -> int:
        """Close the control socket (the process unmounts and exits); its exit code."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def force_unmount(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, check=False)


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FsProcess]:
    """One fs process and mount for a test module; closing its socket must unmount it."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    running = FsProcess(tmp_path_factory.mktemp("fs"))
    assert os.path.ismount(running.mnt)
    try:
        yield running
        running.check_alive()
        assert "Traceback" not in running.log(), running.log()  # a handler crashed: EIO
        code = running.close()
        assert code == 0, running.log()
        assert not os.path.ismount(running.mnt), "the mount outlived its fs process"
    finally:
        running.close()
        running.force_unmount()
