"""Hostile sandboxes against the checkpoints, restores and forks of a manual view: what a
checkpoint holds never changes as the view goes on (whatever kind of entry it changes, and
however it changes it), the view loses nothing of its own to a checkpoint, a sandbox cannot
make its checkpoints fail, and a restore brings back no more than the limits allow."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense._json_messages import MAX_INT
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


def test_fifos_sockets_and_symlinks_of_a_checkpoint_never_change(
    fs: FsProcess, manual: tuple[str, Path, Path]
) -> None:
    """Only a regular file is copied before a change: any other entry linked into a
    checkpoint would take the view's chmod or utimes with it."""
    view_id, view, checkpoint = manual
    with fs.sandbox():
        os.mkfifo(view / "fifo", 0o644)
        os.mknod(view / "sock", stat.S_IFSOCK | 0o644)
        os.symlink("base.txt", view / "link")
    fs.capture(view_id, checkpoint)
    upper = checkpoint / "upper"
    before = {name: os.lstat(upper / name) for name in ("fifo", "sock", "link")}
    with fs.sandbox():
        os.chmod(view / "fifo", 0o600)
        os.chmod(view / "sock", 0o600)
        os.utime(view / "fifo", ns=(1, 1))
        os.utime(view / "link", ns=(1, 1), follow_symlinks=False)
    for name, st in before.items():
        now = os.lstat(upper / name)
        assert (now.st_mode, now.st_mtime_ns) == (st.st_mode, st.st_mtime_ns), name
    fs.restore(view_id, checkpoint)
    with fs.sandbox():
        assert stat.S_ISFIFO(os.lstat(view / "fifo").st_mode)
        assert stat.S_IMODE(os.lstat(view / "fifo").st_mode) == 0o644
        assert os.readlink(view / "link") == "base.txt"
        os.chmod(view / "fifo", 0o640)  # (and the restored entries are the view's own)
    assert stat.S_IMODE(os.lstat(upper / "fifo").st_mode) == 0o644


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


def _link_until_full(source: Path, where: Path) -> int:
    """Give ``source`` names in ``where`` until its disk refuses more; how many."""
    names = 0
    while True:
        try:
            os.link(source, where / str(names))
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
            return names
        names += 1


def test_a_file_with_the_most_links_a_disk_allows_is_still_checkpointed(
    fs: FsProcess, manual: tuple[str, Path, Path]
) -> None:
    """ext4 gives a file at most 65,000 names: a sandbox that gives one file that many
    (within its entries limit) must not make every checkpoint, fork and restore fail."""
    view_id, view, checkpoint = manual
    upper = fs.upper(view_id)
    with fs.sandbox():
        (view / "f").write_text("f\n")
    # (made on the host: 40,000 links through FUSE would take a minute)
    (upper / "d").mkdir()
    names = _link_until_full(upper / "f", upper / "d")
    for name in range(0, names, 2):  # (half of them: a checkpoint cannot link them all)
        os.unlink(upper / "d" / str(name))
    fs.discard(view_id, ())  # (nothing: the view counts its upper tree again when asked)
    captured = _ask(fs, control.Capture(view_id, str(checkpoint), MAX_INT, MAX_INT, seq=10**6))
    assert isinstance(captured, control.Captured), captured
    with fs.sandbox():
        (view / "f").write_text("changed\n")
    assert (checkpoint / "upper" / "f").read_text() == "f\n"
    assert (checkpoint / "upper" / "d" / "1").read_text() == "f\n"
    restored = _ask(fs, control.Restore(view_id, str(checkpoint), seq=10**6 + 1))
    assert isinstance(restored, control.Done), restored
    with fs.sandbox():
        assert (view / "f").read_text() == "f\n"
        assert (view / "d" / "1").read_text() == "f\n"


def test_a_restore_brings_in_no_more_than_the_limits_allow(fs: FsProcess) -> None:
    """A restored file was charged once, when it was written: a restore that put it in the
    delta again for nothing would let a sandbox grow its codebase past its cap without end
    (restore, rename the file, which costs nothing in the delta, commit, and again)."""
    lower = _lower(fs)
    view_id = fs.new_id("m")
    limits = control.Limits(delta_bytes=100_000, codebase_bytes=150_000)
    view = fs.add_view(view_id, lower, RULES, review=True, limits=limits)
    checkpoint = fs.work / f"{view_id}.cp"
    try:
        with fs.sandbox():
            (view / "a").write_bytes(b"x" * 90_000)
        fs.capture(view_id, checkpoint)
        refused = None
        for i in range(5):
            reply = _ask(fs, control.Restore(view_id, str(checkpoint), seq=10**6 + i))
            if isinstance(reply, control.Failed):
                refused = reply
                break
            with fs.sandbox():
                os.rename(view / "a", view / f"a{i}")
            fs.apply(view_id)
        assert refused is not None, "every restore was let in"
        assert refused.errno == errno.ENOSPC, refused
        held = sum(p.stat().st_size for p in lower.iterdir())
        assert held <= 150_000, "the codebase grew past its cap"
        with fs.sandbox():  # (the refused restore left the view as it was)
            assert sorted(os.listdir(view)) == ["a0", "base.txt"]
    finally:
        fs.remove_view(view_id)
        shutil.rmtree(checkpoint, ignore_errors=True)


def test_names_the_sandbox_gave_one_file_go_on_sharing_it_after_a_checkpoint(
    fs: FsProcess,
) -> None:
    """``ln a b``, a checkpoint, then a change through ``a``: ``b`` sees it too (the file was
    copied into the checkpoint, not linked, so nothing splits it), and a restore gives back
    two names of one file."""
    lower = fs.work / f"{fs.new_id('links')}.lower"
    lower.mkdir()
    view_id = fs.new_id("m")
    view = fs.add_view(view_id, lower, RULES, review=True)
    checkpoint = fs.work / f"{view_id}.cp"
    try:
        with fs.sandbox():
            (view / "a").write_text("a\n")
            os.link(view / "a", view / "b")
        fs.capture(view_id, checkpoint)
        with fs.sandbox():
            with (view / "a").open("a") as handle:
                handle.write("more\n")
            assert (view / "b").read_text() == "a\nmore\n"
        assert (checkpoint / "upper" / "a").read_text() == "a\n"
        fs.restore(view_id, checkpoint)
        with fs.sandbox():
            assert (view / "b").read_text() == "a\n"
            with (view / "b").open("a") as handle:
                handle.write("again\n")
            assert (view / "a").read_text() == "a\nagain\n"
        assert (checkpoint / "upper" / "b").read_text() == "a\n"
    finally:
        fs.remove_view(view_id)
        shutil.rmtree(checkpoint, ignore_errors=True)
        shutil.rmtree(lower, ignore_errors=True)
