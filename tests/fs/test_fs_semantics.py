"""What the permission filesystem must do that the property tests do not draw: truncation
by ``open(O_TRUNC)``, files removed while open, paths too long to commit, the delta's limits,
and a rule built to backtrack (a real fs process, real FUSE mounts)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentfense.fs import control
from agentfense.fs.view import MAX_PATH
from agentfense.types import Permission, PermissionRule

from .conftest import FsProcess

WRITE_ALL = [PermissionRule("**", Permission.WRITE)]


def errno_of(action: Callable[..., object], *args: Any, **kwargs: Any) -> int | None:
    """The errno ``action`` failed with, or None when it succeeded."""
    try:
        action(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return None


@pytest.fixture
def view(fs: FsProcess, request: pytest.FixtureRequest) -> Iterator[tuple[str, Path, Path]]:
    """A write-all view of a fresh codebase: (id, its codebase, the view as the sandbox)."""
    view_id = fs.new_id("sem")
    lower = fs.work / f"{view_id}.lower"
    lower.mkdir()
    (lower / "report.txt").write_bytes(b"old report\nnew\n")
    extra = getattr(request, "param", {})
    root = fs.add_view(view_id, lower, WRITE_ALL, **extra)
    try:
        yield view_id, lower, root
    finally:
        fs.remove_view(view_id)


def test_o_trunc_through_the_view_truncates(fs: FsProcess, view: tuple[str, Path, Path]) -> None:
    """The kernel opens without asking us; O_TRUNC must still reach us (as a SETATTR)."""
    view_id, lower, root = view
    with fs.sandbox():
        fd = os.open(root / "report.txt", os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"x\n")
        os.close(fd)
        assert (root / "report.txt").read_bytes() == b"x\n"
    fs.commit(view_id)
    assert (lower / "report.txt").read_bytes() == b"x\n"


def test_a_removed_file_reads_back_while_open(fs: FsProcess, view: tuple[str, Path, Path]) -> None:
    view_id, lower, root = view
    with fs.sandbox():
        held = os.open(root / "report.txt", os.O_RDWR)
        os.unlink(root / "report.txt")
        fs.commit(view_id)  # the codebase's file goes; the open one stays
        assert not (lower / "report.txt").exists()
        assert os.pread(held, 100, 0) == b"old report\nnew\n"
        os.pwrite(held, b"OLD", 0)
        assert os.pread(held, 100, 0) == b"OLD report\nnew\n"
        assert os.fstat(held).st_size == 15
        os.close(held)
    fs.commit(view_id)
    assert sorted(os.listdir(lower)) == []  # never committed


def test_paths_past_path_max_are_refused_when_made(
    fs: FsProcess, view: tuple[str, Path, Path]
) -> None:
    """Every host operation addresses a path as one string, and the sandbox must be able to
    name it as /workspace/PATH: a longer path is refused as it would be made, never found
    at commit (where it would stop every later commit)."""
    view_id, lower, root = view
    name = "d" * 200
    rel = "a"
    with fs.sandbox():
        os.mkdir(root / "a")
        fd = os.open(root / "a", os.O_PATH | os.O_DIRECTORY)
        try:
            while len(f"{rel}/{name}") <= MAX_PATH:
                os.mkdir(name, dir_fd=fd)
                inner = os.open(name, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd, rel = inner, f"{rel}/{name}"
            # One more level would be too long, whatever makes it.
            assert errno_of(os.mkdir, name, dir_fd=fd) == errno.ENAMETOOLONG
            creating = os.O_WRONLY | os.O_CREAT
            assert errno_of(os.open, name, creating, 0o644, dir_fd=fd) == errno.ENAMETOOLONG
        finally:
            os.close(fd)
        # A rename that would push what is below past it is refused too.
        assert errno_of(os.rename, root / "a", root / ("b" * 200)) == errno.ENAMETOOLONG
        os.rename(root / "a", root / "e")  # as long as before: fine
    reply = fs.commit(view_id)  # what was made commits
    assert reply.changed > 0
    walk = [p for p, _, _ in os.walk(lower / "e")]
    assert max(len(os.path.relpath(p, lower)) for p in walk) == len(rel)


@pytest.mark.parametrize(
    "view", [{"limits": control.Limits(delta_entries=50, delta_bytes=1 << 20)}], indirect=True
)
def test_the_delta_counts_entries_as_well_as_bytes(
    fs: FsProcess, view: tuple[str, Path, Path]
) -> None:
    view_id, _, root = view
    with fs.sandbox():
        refusals = [errno_of(os.mkdir, root / f"d{i}") for i in range(100)]
    assert refusals == [None] * 50 + [errno.ENOSPC] * 50
    reply = fs.commit(view_id)
    assert reply.over_limit
    assert reply.changed == 50
    with fs.sandbox():
        os.mkdir(root / "after")  # a new command's budget
        assert errno_of((root / "big").write_bytes, b"x" * (2 << 20)) == errno.ENOSPC


def test_a_rule_built_to_backtrack_costs_its_view_little(fs: FsProcess) -> None:
    view_id = fs.new_id("rx")
    lower = fs.work / f"{view_id}.lower"
    deep = lower / Path(*["a"] * 60)
    deep.mkdir(parents=True)
    (deep / "c").write_bytes(b"found\n")
    rules = [
        PermissionRule("**", Permission.READ),
        PermissionRule("**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/b", Permission.NONE, priority=5),
    ]
    root = fs.add_view(view_id, lower, rules)
    try:
        with fs.sandbox():
            assert (root / Path(*["a"] * 60) / "c").read_bytes() == b"found\n"
    finally:
        fs.remove_view(view_id)


def test_a_codebase_holds_no_more_than_its_caps(fs: FsProcess) -> None:
    view_id = fs.new_id("cap")
    lower = fs.work / f"{view_id}.lower"
    lower.mkdir()
    (lower / "a").write_bytes(b"x" * 1000)
    (lower / "d").mkdir()
    limits = control.Limits(codebase_entries=4, codebase_bytes=3000)
    root = fs.add_view(view_id, lower, WRITE_ALL, limits=limits)
    try:
        with fs.sandbox():
            (root / "b").write_bytes(b"y" * 1000)  # 3 entries, 2000 bytes
            # The entry fits, the bytes do not.
            assert errno_of((root / "c").write_bytes, b"z" * 1001) == errno.ENOSPC
        fs.commit(view_id)  # (c was made, empty: the fourth entry)
        with fs.sandbox():
            assert errno_of(os.mkdir, root / "e") == errno.ENOSPC
            os.unlink(root / "c")
        fs.commit(view_id)  # room for one again
        with fs.sandbox():
            os.mkdir(root / "e")
    finally:
        fs.remove_view(view_id)


def test_hard_links_share_one_content(fs: FsProcess, view: tuple[str, Path, Path]) -> None:
    """Two names of one file are two nodes (each path has its own): a write through one must
    not leave the other's cached pages stale."""
    view_id, lower, root = view
    with fs.sandbox():
        (root / "f").write_bytes(b"first\n")
        os.link(root / "f", root / "g")
        assert (root / "g").read_bytes() == b"first\n"  # cached now
        (root / "f").write_bytes(b"second\n")
        deadline = time.monotonic() + 5  # the other name is told asynchronously
        while (root / "g").read_bytes() != b"second\n" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (root / "g").read_bytes() == b"second\n"
    fs.commit(view_id)  # committed as copies; the sandbox keeps its two names of one file
    assert (lower / "f").read_bytes() == (lower / "g").read_bytes() == b"second\n"
    with fs.sandbox():
        (root / "g").write_bytes(b"third\n")
        deadline = time.monotonic() + 5
        while (root / "f").read_bytes() != b"third\n" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (root / "f").read_bytes() == b"third\n"
