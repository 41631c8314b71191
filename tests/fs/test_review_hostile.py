"""Hostile sequences against a view under review (a real fs process, real FUSE mounts)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfense.fs import control, review
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


# -- a request naming thousands of paths, on a view holding thousands of changes ------------

names = st.sampled_from(["a", "b", "a!", "a.b", "b-", "c"])
relpaths = st.lists(names, min_size=1, max_size=4).map("/".join)


@given(paths=st.lists(relpaths | st.just(""), max_size=6), rel=relpaths)
def test_a_selection_holds_what_is_at_or_below_its_paths(paths: list[str], rel: str) -> None:
    """As ``under`` tells it (tested against every path), told by bisection."""
    selection = review.Selection(paths)
    assert (rel in selection) == review.under(rel, paths)
    top = selection.top_of(rel)
    assert top is None or review.under(rel, (top,))


def test_thousands_of_paths_against_thousands_of_changes_take_no_seconds(
    fs: FsProcess, codebase: Path
) -> None:
    """Each change was tested against each path: 20,000 changes and 4,096 paths (what a
    request may name) held the view, and every view's thread with it, for ten seconds."""
    view_id = fs.new_id("m")
    view = fs.add_view(view_id, codebase, RULES, review=True)
    try:
        with fs.sandbox():
            (view / "first").write_text("x")
        upper = fs.upper(view_id)  # (what 20,000 writes of the sandbox leave, made faster)
        for i in range(20_000):
            (upper / f"f{i:05d}").write_bytes(b"")
        paths = (*(f"missing{i}/x" for i in range(4095)), "f00007")
        for call in (
            lambda: fs.changes(view_id, paths),
            lambda: fs.apply(view_id, paths),
            lambda: fs.discard(view_id, paths),
        ):
            start = time.monotonic()
            call()
            assert time.monotonic() - start < 3
        assert len(fs.changes(view_id)) == 20_000  # (f00007 committed, then nothing left)
        assert (codebase / "f00007").exists()
    finally:
        fs.remove_view(view_id)


def test_two_views_committing_one_file_at_once_conflict(fs: FsProcess) -> None:
    """Each view's commit checked the codebase, then renamed its files in, on its own thread:
    two at once both found the codebase as their bases had it, and the later rename threw the
    other's file away, both reported applied and neither a conflict."""
    lower = fs.work / f"{fs.new_id('race')}.lower"
    count = 300
    write_tree(lower, {f"f{i:03d}": b"base\n" for i in range(count)})
    ids = [fs.new_id("m"), fs.new_id("m")]
    views = [fs.add_view(view_id, lower, RULES, review=True) for view_id in ids]
    try:
        with fs.sandbox():
            for view_id, view in zip(ids, views, strict=True):
                for i in range(count):
                    (view / f"f{i:03d}").write_text(f"{view_id}\n")
        for view_id in ids:  # both at once: the fs process serves each on the view's thread
            fs._channel.send(control.Apply(view_id, None, False, seq=fs._next_seq()).encode())
        replies = [fs._receive() for _ in ids]
        applied: list[set[str]] = []
        for reply in replies:
            assert isinstance(reply, control.Committed), reply
            applied.append(set(reply.applied))
            assert set(reply.applied) | {path for path, _ in reply.conflicts} == {
                f"f{i:03d}" for i in range(count)
            }
        assert not applied[0] & applied[1], "a file both commits applied: one was thrown away"
        winners = {view_id: 0 for view_id in ids}
        for i in range(count):
            winners[(lower / f"f{i:03d}").read_text().strip()] += 1
        assert sorted(winners.values()) == sorted(len(a) for a in applied)
    finally:
        for view_id in ids:
            fs.remove_view(view_id)
