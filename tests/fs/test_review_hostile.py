"""Hostile sequences against a view under review (a real fs process, real FUSE mounts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentfense.types import Permission, PermissionRule

from .conftest import FsProcess
from .test_fs_properties import write_tree

RULES = [PermissionRule("**", Permission.WRITE), PermissionRule("**/.env/**", Permission.NONE)]


@pytest.fixture
def codebase(fs: FsProcess) -> Path:
    lower = fs.work / f"{fs.new_id('hostile')}.lower"
    write_tree(lower, {"a.txt": b"one\n", "d": None, "d/b.txt": b"two\n"})
    return lower


def test_a_name_the_view_made_then_saved_again_conflicts_with_the_codebases(
    fs: FsProcess, codebase: Path
) -> None:
    """The view made ``x`` when the codebase had none; another sandbox committed its own
    ``x``; the view then saved ``x`` again by a rename over it (as editors save), or removed
    it. The view never saw the codebase's ``x``: committing is a conflict, not an overwrite."""
    mine, theirs = fs.new_id("m"), fs.new_id("m")
    view = fs.add_view(mine, codebase, RULES, review=True)
    other = fs.add_view(theirs, codebase, RULES, review=True)
    try:
        with fs.sandbox():
            (view / "x").write_text("mine\n")
            (view / "y").write_text("mine\n")
            (other / "x").write_text("theirs\n")
            (other / "y").write_text("theirs\n")
        assert fs.apply(theirs).applied == ("x", "y")
        with fs.sandbox():
            (view / "x.tmp").write_text("mine again\n")
            os.rename(view / "x.tmp", view / "x")
            os.unlink(view / "y")
        reply = fs.apply(mine)
        assert sorted(path for path, _ in reply.conflicts) == ["x", "y"]
        assert reply.applied == ()
        assert (codebase / "x").read_text() == "theirs\n"
        assert (codebase / "y").read_text() == "theirs\n"
    finally:
        fs.remove_view(mine)
        fs.remove_view(theirs)


def test_a_hard_linked_file_committed_then_changed_again_is_no_conflict(
    fs: FsProcess, codebase: Path
) -> None:
    view_id = fs.new_id("m")
    view = fs.add_view(view_id, codebase, RULES, review=True)
    try:
        with fs.sandbox():
            os.link(view / "a.txt", view / "link")
            (view / "a.txt").write_text("first\n")
        reply = fs.apply(view_id, ("a.txt",))
        assert reply.applied == ("a.txt",)
        assert (codebase / "a.txt").read_text() == "first\n"
        with fs.sandbox():
            (view / "a.txt").write_text("second\n")
        reply = fs.apply(view_id, ("a.txt",))
        assert reply.conflicts == ()
        assert reply.applied == ("a.txt",)
        assert (codebase / "a.txt").read_text() == "second\n"
    finally:
        fs.remove_view(view_id)
