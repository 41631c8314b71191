"""A closed view is freed at once, not left to the cyclic garbage collector: CPython runs its
full pass only once the long-lived heap has grown by a quarter, so the views of a thousand
destroyed sandboxes (their node tables, policies, caches) stayed in the fs process long after.

The fs process's loop runs in a thread of this test (real FUSE mounts, driven over its control
channel as the server drives it), with the collector disabled while views live and close.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense import get_preset
from agentfense.fs import control
from agentfense.fs.__main__ import FsProcess
from agentfense.fs._device import mount_view, unmount
from agentfense.fs.generation import new_fd

VIEWS = 3


class _Driver:
    def __init__(self, base: Path) -> None:
        self.base = base
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.settimeout(60)
        self._theirs = theirs
        self.process = FsProcess(theirs)
        self._thread = threading.Thread(target=self.process.run, daemon=True)
        self._thread.start()
        self._sock = ours
        self._channel = control.channel(ours)
        self._seq = 0
        assert isinstance(self._receive(), control.Done)

    def _receive(self) -> control.Reply:
        received = self._channel.receive()
        assert received is not None
        return control.decode_reply(received[0])

    def request(self, message: control.Request, fds: tuple[int, ...] = ()) -> None:
        self._channel.send(message.encode(), fds)
        reply = self._receive()
        assert not isinstance(reply, control.Failed), reply

    def seq(self) -> int:
        self._seq += 1
        return self._seq

    def close(self) -> None:
        self._sock.close()
        self._thread.join(30)
        self._theirs.close()  # (the process's end: its exit closes it)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[_Driver]:
    lower = tmp_path / "lower"
    (lower / "tests").mkdir(parents=True)
    (lower / "README.md").write_text("hello\n")
    (lower / "tests" / "test_x.py").write_text("import unittest\n")
    running = _Driver(tmp_path)
    yield running
    running.close()


def _mounted(driver: _Driver, view_id: str) -> tuple[Path, int]:
    """A new FUSE connection mounted for ``view_id``: its mountpoint and device fd."""
    mountpoint = driver.base / view_id
    mountpoint.mkdir()
    return mountpoint, mount_view(mountpoint)


def _add_view(driver: _Driver, view_id: str, fd: int, delta: Path | None = None) -> control.Reply:
    """Ask for an ``agent-safe`` view of the lower tree on ``fd`` (with a new generation, as
    the server sends it); the reply."""
    spec = control.AddView(
        id=view_id,
        lower=str(driver.base / "lower"),
        delta=str(delta or driver.base / f"{view_id}.delta"),
        rules=tuple(get_preset("agent-safe")),
        uid=0,
        gid=0,
        seq=driver.seq(),
    )
    generation_fd = new_fd()
    try:
        driver._channel.send(spec.encode(), (fd, generation_fd))
        return driver._receive()
    finally:
        os.close(generation_fd)


def _life(driver: _Driver, number: int) -> None:
    """A view is added, used (read, written, committed), removed and unmounted."""
    view_id = f"sb_{number:016x}"
    mountpoint, fd = _mounted(driver, view_id)
    assert isinstance(_add_view(driver, view_id, fd), control.Done)
    server = driver.process.servers[view_id]
    assert (mountpoint / "README.md").read_text() == "hello\n"
    (mountpoint / "output").mkdir(exist_ok=True)  # (committed by an earlier view)
    (mountpoint / "output" / "report.txt").write_text("done\n")
    assert sorted(os.listdir(mountpoint / "tests")) == ["test_x.py"]
    driver.request(control.Commit(view_id, seq=driver.seq()))
    driver.request(control.RemoveView(view_id, seq=driver.seq()))
    unmount(mountpoint)
    os.close(fd)
    server._thread.join(30)  # (the view's thread closes it once the connection ends)
    assert not server._thread.is_alive()


def test_a_closed_view_leaves_no_cycles(driver: _Driver) -> None:
    _life(driver, 0)  # (one-off costs: imports, caches)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for number in range(1, VIEWS + 1):
            _life(driver, number)
        gc.collect()
        left = sorted(
            {
                f"{type(thing).__module__}.{type(thing).__qualname__}"
                for thing in gc.garbage
                if str(type(thing).__module__).startswith("agentfense")
            }
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not left, f"closed views left cycles of: {left}"


def test_a_commit_of_a_view_whose_connection_ended_is_answered(driver: _Driver) -> None:
    """A view unmounted without RemoveView (its connection ended: its thread closed it) and
    then asked to commit answers Failed, at once: the server waits for every commit's answer,
    holding the sandbox's commands, its stop and its destroy until it comes."""
    view_id = "sb_00000000000000ff"
    mountpoint, fd = _mounted(driver, view_id)
    assert isinstance(_add_view(driver, view_id, fd), control.Done)
    server = driver.process.servers[view_id]
    unmount(mountpoint)
    server._thread.join(30)
    assert not server._thread.is_alive()
    driver._sock.settimeout(10)
    driver._channel.send(control.Commit(view_id, seq=driver.seq()).encode())
    reply = driver._receive()
    assert isinstance(reply, control.Failed), reply
    driver.request(control.RemoveView(view_id, seq=driver.seq()))
    os.close(fd)


def _generation_mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum("agentfense-view-generation" in line for line in maps)


def test_a_view_that_cannot_be_served_leaves_nothing_of_its_fds(driver: _Driver) -> None:
    """An AddView that fails (its delta cannot be made) is answered Failed; its two fds are
    closed once each (by whoever received them) and its generation is not left mapped."""
    (driver.base / "a-file").write_text("")
    before = _generation_mappings()
    view_ids = [f"sb_00000000000001{attempt:02x}" for attempt in range(3)]
    for view_id in view_ids:
        mountpoint, fd = _mounted(driver, view_id)
        unmade = driver.base / "a-file" / "delta"  # (under a file: cannot be made)
        assert isinstance(_add_view(driver, view_id, fd, unmade), control.Failed)
        unmount(mountpoint)
        os.close(fd)
    assert _generation_mappings() == before
    assert not set(view_ids) & set(driver.process.servers)
