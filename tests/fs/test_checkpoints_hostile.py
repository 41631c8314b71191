"""Hostile sandboxes against the checkpoints, restores and forks of a manual view: what a
checkpoint holds never changes as the view goes on (whatever kind of entry it changes, and
however it changes it), the view loses nothing of its own to a checkpoint, a sandbox cannot
make its checkpoints fail, and a restore brings back no more than the limits allow."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense.fs import control
from agentfense.types import Permission, PermissionRule

from .conftest import FsProcess

RULES = [PermissionRule("**", Permission.WRITE)]


def _lower(fs: FsProcess) -> Path:
    lower = fs.work / f"{fs.new_id('cb')}.lower"
    lower.mkdir()
    lower.chmod(0o755)
    (lower / "base.txt").write_text("base\n")
    return lower


@pytest.fixture
def manual(fs: FsProcess) -> Iterator[tuple[str, Path, Path]]:
    """A manual view of a small codebase: its id, its mount and where a checkpoint goes."""
    view_id = fs.new_id("m")
    view = fs.add_view(view_id, _lower(fs), RULES, review=True)
    checkpoint = fs.work / f"{view_id}.cp"
    try:
        yield view_id, view, checkpoint
    finally:
        fs.remove_view(view_id)
        shutil.rmtree(checkpoint, ignore_errors=True)


def _ask(fs: FsProcess, message: control.Request) -> control.Reply:
    """The reply to ``message``, a failure included."""
    fs._channel.send(message.encode())
    return fs._receive()


def test_a_file_copied_before_a_change_keeps_its_extended_attributes(
    fs: FsProcess, manual: tuple[str, Path, Path]
) -> None:
    view_id, view, checkpoint = manual
    with fs.sandbox():
        (view / "a.txt").write_text("a\n")
        os.setxattr(view / "a.txt", "user.origin", b"agent")
    fs.capture(view_id, checkpoint)
    with fs.sandbox():
        with (view / "a.txt").open("a") as handle:
            handle.write("more\n")
        assert os.getxattr(view / "a.txt", "user.origin") == b"agent"
        assert (view / "a.txt").read_text() == "a\nmore\n"
    assert (checkpoint / "upper" / "a.txt").read_text() == "a\n"


