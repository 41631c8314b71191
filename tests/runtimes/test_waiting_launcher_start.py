"""``WaitingLauncher.start`` when it cannot make what it needs: None (the first command is
then spawned as every later one), and nothing of its left behind; the caller's limit
cgroups and their fds stay the caller's to release."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

from agentfense.runtimes._cgroup import SandboxCgroup
from agentfense.runtimes._waiting_launcher import WaitingLauncher


def test_no_socket_left_means_no_launcher_and_no_leaf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socketpair refused (EMFILE: the server out of descriptors) once raised out of
    ``start`` with the first command's leaves made, and ``prepare`` took the OSError for
    "nothing begun": the limit cgroups and the fds on them were never let go."""

    def refused(*args: object) -> tuple[socket.socket, socket.socket]:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(socket, "socketpair", refused)  # (the module calls socket.socketpair)
    cgroup = SandboxCgroup(tmp_path, "sb_x.run")
    limit = os.open(tmp_path / "cgroup.procs", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        assert WaitingLauncher.start(Path("/nonexistent/launcher"), [limit], cgroup) is None
        assert sorted(p.name for p in cgroup.path.iterdir()) == []
        os.fstat(limit)  # (still open: the caller's)
    finally:
        os.close(limit)
