"""What the permission filesystem must do that the property tests do not draw: truncation
by ``open(O_TRUNC)``, files removed while open, paths too long to commit, the delta's limits,
and a rule built to backtrack (a real fs process, real FUSE mounts)."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentfense.fs import control
from agentfense.fs._host import dir_entries
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


SECRETS = [PermissionRule("**", Permission.WRITE), PermissionRule("**/*.key", Permission.NONE)]


def _offsets(directory: Path) -> list[tuple[str, int]]:
    """``(name, d_off)`` of each entry, as getdents64 gives them to a program."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return [(name, after) for name, _, after in dir_entries(fd, 0)]
    finally:
        os.close(fd)


def test_listing_offsets_tell_nothing_of_hidden_entries(fs: FsProcess) -> None:
    """An entry's offset is its position among what the view shows: the host's offsets
    would count the hidden entries between two shown ones (tmpfs), or hash their names."""
    view_id = fs.new_id("off")
    lower = fs.work / f"{view_id}.lower"
    for directory, hidden in (("many", 7), ("none", 0)):
        (lower / directory).mkdir(parents=True)
        for name in ("a.txt", "m.txt", "z.txt"):
            (lower / directory / name).write_bytes(b"x")
        for i in range(hidden):
            (lower / directory / f"s{i}.key").write_bytes(b"secret")
    root = fs.add_view(view_id, lower, SECRETS)
    try:
        with fs.sandbox():
            for directory in ("many", "none"):
                seen = _offsets(root / directory)
                assert sorted(name for name, _ in seen) == [".", "..", "a.txt", "m.txt", "z.txt"]
                assert [offset for _, offset in seen] == [1, 2, 3, 4, 5]
    finally:
        fs.remove_view(view_id)


def test_a_refused_rename_tells_nothing_of_hidden_names(fs: FsProcess) -> None:
    """Hidden entries stay where they are when their directory moves: their names never
    count towards the longest path a rename would make (ENAMETOOLONG would measure them)."""
    view_id = fs.new_id("len")
    lower = fs.work / f"{view_id}.lower"
    for directory, hidden in (("p", True), ("r", False)):
        (lower / directory).mkdir(parents=True)
        (lower / directory / "a.txt").write_bytes(b"x")
        if hidden:
            (lower / directory / ("s" * 240 + ".key")).write_bytes(b"secret")
    root = fs.add_view(view_id, lower, SECRETS)
    name = "d" * 200
    try:
        with fs.sandbox():
            top = os.open(root, os.O_PATH | os.O_DIRECTORY)
            os.mkdir("t", dir_fd=top)
            fd, rel = os.open("t", os.O_PATH | os.O_DIRECTORY, dir_fd=top), "t"
            try:
                # Deep enough that p/a.txt just fits below, where p's hidden name would not.
                while len(f"{rel}/{name}/p/a.txt") <= MAX_PATH:
                    os.mkdir(name, dir_fd=fd)
                    inner = os.open(name, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
                    os.close(fd)
                    fd, rel = inner, f"{rel}/{name}"
                assert len(f"{rel}/p/{'s' * 240}.key") > MAX_PATH
                outcomes = {
                    d: errno_of(os.rename, d, d, src_dir_fd=top, dst_dir_fd=fd) for d in "pr"
                }
            finally:
                os.close(fd)
                os.close(top)
        assert outcomes == {"p": None, "r": None}
    finally:
        fs.remove_view(view_id)


def test_a_removed_file_held_open_changes_nothing_of_the_codebase(
    fs: FsProcess, view: tuple[str, Path, Path]
) -> None:
    """Until the commit, the codebase's file stays as it was, whatever a descriptor on its
    removed name does (its content, its mode, its times)."""
    _, lower, root = view
    before = os.stat(lower / "report.txt")
    with fs.sandbox():
        held = os.open(root / "report.txt", os.O_RDWR)
        try:
            os.unlink(root / "report.txt")
            os.fchmod(held, 0)
            os.utime(held, ns=(0, 0))
            os.pwrite(held, b"X", 0)
            assert os.fstat(held).st_mode & 0o777 == 0
        finally:
            os.close(held)
    after = os.stat(lower / "report.txt")
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert (lower / "report.txt").read_bytes() == b"old report\nnew\n"


@pytest.mark.parametrize("view", [{"limits": control.Limits(node_bytes=256 * 1024)}], indirect=True)
def test_the_node_table_keeps_to_its_budget(fs: FsProcess, view: tuple[str, Path, Path]) -> None:
    """Past its budget, the table asks the kernel to drop the entries used longest ago: a
    file looked up again later has a new inode number (its old node is gone)."""
    _, lower, root = view
    for i in range(3000):
        (lower / f"file-with-a-longish-name-{i:05}").write_bytes(b"x")
    with fs.sandbox():
        first = os.stat(root / "file-with-a-longish-name-00000").st_ino
        for i in range(1, 3000):
            os.stat(root / f"file-with-a-longish-name-{i:05}")
        deadline = time.monotonic() + 10  # the kernel lets go asynchronously
        again = first
        while time.monotonic() < deadline:
            again = os.stat(root / "file-with-a-longish-name-00000").st_ino
            if again != first:
                break
            for i in range(1, 3000, 7):  # more lookups: more upkeep
                os.stat(root / f"file-with-a-longish-name-{i:05}")
        assert again != first


def test_a_full_disk_fails_requests_and_kills_nothing(fs: FsProcess) -> None:
    """With the delta's file system full, the view goes on: what it must write down has room
    reserved; when that runs out, a request that would write something down is refused
    with ENOSPC before it changes anything, but removals still work (they free room); with
    room again, everything works."""
    view_id = fs.new_id("full")
    lower = fs.work / f"{view_id}.lower"
    lower.mkdir()
    names = [f"{i:05}-{'n' * 240}" for i in range(6000)]  # ~1.5 MiB of node records
    for name in names:
        (lower / name).write_bytes(b"x")
    delta = fs.delta(view_id)
    delta.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(delta)], check=True)
    try:
        root = fs.add_view(view_id, lower, WRITE_ALL)
        try:
            with fs.sandbox():
                with open(root / "fill", "wb") as fill:
                    assert errno_of(fill.write, b"\0" * (8 << 20)) == errno.ENOSPC
                failed = [errno_of(os.stat, root / name) for name in names]
                assert set(failed) == {None, errno.ENOSPC}  # the reserve took some, then none
                os.unlink(root / "fill")  # a removal still works, and frees room
                assert [errno_of(os.stat, root / name) for name in names] == [None] * 6000
                assert (root / names[-1]).read_bytes() == b"x"
        finally:
            fs.remove_view(view_id)
    finally:
        subprocess.run(["umount", "-l", str(delta)], check=False)


def test_the_generation_counts_what_may_change_the_view_and_nothing_else(
    fs: FsProcess, view: tuple[str, Path, Path]
) -> None:
    """Reads, lookups and listings leave the view's generation as it is; each request that
    may change the view counts, before it is answered (refused ones too); a commit says the
    count it committed up to. The server skips the commit of a command that left it as the
    last commit did."""
    view_id, lower, root = view
    generation = fs.generations[view_id]
    start = generation.read()
    with fs.sandbox():
        assert (root / "report.txt").read_bytes() == b"old report\nnew\n"
        assert sorted(os.listdir(root)) == ["report.txt"]
        os.stat(root / "report.txt")
        assert errno_of(os.stat, root / "missing") == errno.ENOENT
        assert errno_of(os.listxattr, root / "report.txt") in (None, errno.ENOTSUP)
    assert generation.read() == start
    changes: list[Callable[[], object]] = [
        lambda: (root / "new.txt").write_bytes(b"x"),
        lambda: os.mkdir(root / "d"),
        lambda: os.chmod(root / "new.txt", 0o600),
        lambda: os.rename(root / "new.txt", root / "d" / "new.txt"),
        lambda: os.symlink("d", root / "link"),
        lambda: os.unlink(root / "link"),
        lambda: errno_of(os.rmdir, root / "d"),  # (refused: not empty; counted all the same)
    ]
    for number, change in enumerate(changes, start=1):
        with fs.sandbox():
            change()
        assert generation.read() > start + number - 1, number
    counted = generation.read()
    reply = fs.commit(view_id)
    assert reply.generation == counted
    assert (lower / "d" / "new.txt").read_bytes() == b"x"
    with fs.sandbox():
        assert (root / "d" / "new.txt").read_bytes() == b"x"
    assert generation.read() == counted
