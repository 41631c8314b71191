"""Reviewing a view's changes on a real fs process and real FUSE mounts: what ``ListChanges``
lists is exactly how the view differs from its codebase (checked against both trees as read,
for random sequences of writes, commits of some paths and discards of others), a commit
leaves the view as it was and the other changes in its delta, a discard gives back the
codebase's entries there, and a commit under review refuses to overwrite what the codebase
got since the view first changed it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from agentfense.fs import control
from agentfense.types import Permission, PermissionRule

from .conftest import FsProcess
from .test_fs_properties import NAMES, Tree, depth, join, trees, under, write_tree

WRITE, NONE = Permission.WRITE, Permission.NONE
RULES = [PermissionRule("**", WRITE), PermissionRule("**/.env/**", NONE)]
HIDDEN = ".env"

Entry = tuple[str, bytes | None, int]  # type ("file", "directory"), content, permission bits
Shown = dict[str, Entry]


def shown(root: Path) -> Shown:
    """Every entry under ``root`` that the rules show (read as whoever calls it)."""
    found: Shown = {}
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(root / rel if rel else root) as entries:
            for entry in entries:
                if entry.name == HIDDEN:
                    continue
                child = join(rel, entry.name)
                st_ = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st_.st_mode):
                    found[child] = ("directory", None, stat.S_IMODE(st_.st_mode))
                    pending.append(child)
                else:
                    content = Path(entry.path).read_bytes()
                    found[child] = ("file", content, stat.S_IMODE(st_.st_mode))
    return found


def expected_changes(view: Shown, codebase: Shown) -> dict[str, str]:
    """The model: every path where the two trees differ, and how."""
    changes = {}
    for rel in view.keys() | codebase.keys():
        v, c = view.get(rel), codebase.get(rel)
        if c is None:
            changes[rel] = "added"
        elif v is None:
            changes[rel] = "deleted"
        elif v[0] != c[0]:
            changes[rel] = "type_changed"
        elif v != c:
            changes[rel] = "modified"
    return changes


def listed(fs: FsProcess, view_id: str, paths: tuple[str, ...] | None = None) -> dict[str, str]:
    return {change.path: change.kind for change in fs.changes(view_id, paths)}


def ancestors(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


class Review(RuleBasedStateMachine):
    """A view under review of a random codebase (with hidden ``.env`` entries), changed at
    random, with commits and discards of random selections."""

    fs: ClassVar[FsProcess]

    def __init__(self) -> None:
        super().__init__()
        self.view_id = ""
        self.lower = self.view = Path()
        # Each checkpoint: where it is, the view's tree then, and whether the codebase has
        # changed since (then a restore gives that layer over another codebase).
        self.checkpoints: list[tuple[Path, Shown, bool]] = []
        self.stale_bases = False  # a checkpoint taken before a commit was restored

    @initialize(tree=trees(max_entries=8))
    def start(self, tree: Tree) -> None:
        self.view_id = self.fs.new_id("review")
        self.lower = self.fs.work / f"{self.view_id}.lower"
        write_tree(self.lower, tree)
        self.view = self.fs.add_view(self.view_id, self.lower, RULES, review=True)

    def teardown(self) -> None:
        if self.view_id:
            self.fs.remove_view(self.view_id)
            shutil.rmtree(self.lower)
        for where, _, _ in self.checkpoints:
            shutil.rmtree(where)
        self.fs.check_alive()

    def seen(self) -> Shown:
        with self.fs.sandbox():
            return shown(self.view)

    def _paths(self, kind: str | None = None) -> list[str]:
        return sorted(p for p, e in self.seen().items() if kind is None or e[0] == kind)

    def _new_path(self, data: st.DataObject) -> str:
        parents = ["", *(d for d in self._paths("directory") if depth(d) < 3)]
        return join(data.draw(st.sampled_from(parents)), data.draw(st.sampled_from(NAMES[:5])))

    def _selection(self, data: st.DataObject) -> tuple[str, ...] | None:
        candidates = sorted({*listed(self.fs, self.view_id), *self._paths("directory")})
        if not candidates or data.draw(st.booleans()):
            return None
        return tuple(data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3)))

    # -- what a command does in the sandbox (refused at times: renaming a directory that
    # holds a hidden entry, say; the invariant reads what happened)

    @rule(data=st.data(), content=st.binary(max_size=8), append=st.booleans())
    def write(self, data: st.DataObject, content: bytes, append: bool) -> None:
        files = self._paths("file")
        existing = bool(files) and data.draw(st.booleans())
        rel = data.draw(st.sampled_from(files)) if existing else self._new_path(data)
        if self.seen().get(rel, ("file",))[0] == "directory":
            return
        with (
            self.fs.sandbox(),
            contextlib.suppress(PermissionError),
            (self.view / rel).open("ab" if append else "wb") as handle,
        ):
            handle.write(content)  # (appended: in place, linked into a checkpoint or not)

    @rule(data=st.data())
    def mkdir(self, data: st.DataObject) -> None:
        rel = self._new_path(data)
        if rel not in self.seen():
            with self.fs.sandbox(), contextlib.suppress(PermissionError):
                os.mkdir(self.view / rel, data.draw(st.sampled_from([0o755, 0o700])))

    @precondition(lambda self: self._paths())
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        rel = data.draw(st.sampled_from(self._paths()))
        with self.fs.sandbox(), contextlib.suppress(PermissionError):
            if (self.view / rel).is_dir():
                shutil.rmtree(self.view / rel)
            else:
                os.unlink(self.view / rel)

    @precondition(lambda self: self._paths())
    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        old = data.draw(st.sampled_from(self._paths()))
        new = self._new_path(data)
        seen = self.seen()
        if under(new, old) or under(old, new) or new in seen:
            return
        with self.fs.sandbox(), contextlib.suppress(PermissionError):
            os.rename(self.view / old, self.view / new)

    @precondition(lambda self: self._paths("file"))
    @rule(data=st.data())
    def chmod(self, data: st.DataObject) -> None:
        rel = data.draw(st.sampled_from(self._paths("file")))
        with self.fs.sandbox(), contextlib.suppress(PermissionError):
            os.chmod(self.view / rel, data.draw(st.sampled_from([0o644, 0o600, 0o755])))

    # -- review

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        paths = self._selection(data)
        before_view, before = self.seen(), listed(self.fs, self.view_id)
        reply = self.fs.apply(self.view_id, paths)
        kept = {path for path, why in reply.conflicts if "cannot see" in why}
        kept |= {
            path
            for path, why in reply.conflicts
            if "not committed" in why and any(under(k, path) for k in kept)
        }
        if self.stale_bases:  # (a layer restored over a codebase that moved since: its
            kept |= {path for path, _ in reply.conflicts}  # bases say so, conflicts follow)
        assert kept == {path for path, _ in reply.conflicts}, "no conflict but hidden entries"
        assert self.seen() == before_view, "a commit changes nothing the sandbox sees"
        applied = set(reply.applied)
        selected = {p for p in before if paths is None or any(under(p, top) for top in paths)}
        assert selected <= applied | kept, "every selected change is applied"
        room = {a for top in paths or () for a in ancestors(top)}
        assert applied - selected <= room, "beyond the selection: only directories on the way"
        after = listed(self.fs, self.view_id)
        assert after == {p: k for p, k in before.items() if p not in applied}, "the others stay"
        if applied:
            self.checkpoints = [(where, then, True) for where, then, _ in self.checkpoints]

    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        paths = self._selection(data)
        before_view, before = self.seen(), listed(self.fs, self.view_id)
        codebase = shown(self.lower)
        reply = self.fs.discard(self.view_id, paths)
        assert shown(self.lower) == codebase, "a discard leaves the codebase alone"
        tops = paths if paths is not None else ("",)
        selected = {p for p in before if any(not top or under(p, top) for top in tops)}
        assert selected <= set(reply.applied)
        after_view = self.seen()
        for rel in after_view.keys() | codebase.keys() | before_view.keys():
            if any(not top or under(rel, top) for top in tops):
                assert after_view.get(rel) == codebase.get(rel), f"{rel} is the codebase's"
        after = listed(self.fs, self.view_id)
        assert after == {p: k for p, k in before.items() if p not in set(reply.applied)}

    @rule()
    def checkpoint(self) -> None:
        where = self.fs.work / f"{self.view_id}.cp{len(self.checkpoints)}"
        self.fs.capture(self.view_id, where)
        self.checkpoints.append((where, self.seen(), False))

    @precondition(lambda self: self.checkpoints)
    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        codebase = shown(self.lower)
        where, then, moved = data.draw(st.sampled_from(self.checkpoints))
        self.fs.restore(self.view_id, where)
        assert shown(self.lower) == codebase, "a restore leaves the codebase alone"
        if not moved:
            assert self.seen() == then, "the checkpointed tree comes back"
        self.stale_bases |= moved

    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        """A fork's tree is its parent's; then each goes its own way."""
        child = self.fs.new_id("fork")
        self.fs.capture(self.view_id, self.fs.delta(child))
        view = self.fs.add_view(child, self.lower, RULES, review=True)
        try:
            parent_tree = self.seen()
            with self.fs.sandbox():
                assert shown(view) == parent_tree
                (view / "forked").write_text("child only")
            assert "forked" not in self.seen()
            assert listed(self.fs, child) == expected_changes(self.seen_in(view), shown(self.lower))
            files = [p for p, e in parent_tree.items() if e[0] == "file"]
            if files:  # a change in place by the parent reaches neither the child
                rel = data.draw(st.sampled_from(files))
                with (
                    self.fs.sandbox(),
                    contextlib.suppress(PermissionError),
                    (self.view / rel).open("ab") as handle,
                ):
                    handle.write(b"+parent")
                assert self.seen_in(view)[rel] == parent_tree[rel], "the parent's write"
        finally:
            self.fs.remove_view(child)

    def seen_in(self, view: Path) -> Shown:
        with self.fs.sandbox():
            return shown(view)

    @invariant()
    def changes_are_the_difference(self) -> None:
        if self.view_id:
            model = expected_changes(self.seen(), shown(self.lower))
            assert listed(self.fs, self.view_id) == model


def test_changes_commit_and_discard_model(fs: FsProcess) -> None:
    Review.fs = fs
    run_state_machine_as_test(
        Review,
        settings=settings(
            max_examples=150,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


# -- conflicts --------------------------------------------------------------------------------


@pytest.fixture
def codebase(fs: FsProcess) -> Path:
    lower = fs.work / f"{fs.new_id('conflict')}.lower"
    write_tree(lower, {"a.txt": b"one\n", "d": None, "d/b.txt": b"two\n"})
    return lower


def test_a_second_manual_commit_of_the_same_file_is_a_conflict(
    fs: FsProcess, codebase: Path
) -> None:
    first, second = fs.new_id("m"), fs.new_id("m")
    views = [fs.add_view(ident, codebase, RULES, review=True) for ident in (first, second)]
    with fs.sandbox():
        (views[0] / "a.txt").write_text("first\n")
        (views[1] / "a.txt").write_text("second\n")
        (views[1] / "new.txt").write_text("new\n")
    try:
        assert fs.apply(first).applied == ("a.txt",)
        assert (codebase / "a.txt").read_text() == "first\n"
        reply = fs.apply(second)
        assert reply.applied == ("new.txt",)
        assert [path for path, _ in reply.conflicts] == ["a.txt"]
        assert "changed it since" in reply.conflicts[0][1]
        # Both versions stay reachable: the codebase's, and the second sandbox's in its view.
        assert (codebase / "a.txt").read_text() == "first\n"
        with fs.sandbox():
            assert (views[1] / "a.txt").read_text() == "second\n"
        assert listed(fs, second) == {"a.txt": "modified"}
        # Overwriting is asked for by name; then the second sandbox's version lands.
        assert fs.apply(second, ("a.txt",), overwrite=True).applied == ("a.txt",)
        assert (codebase / "a.txt").read_text() == "second\n"
        assert listed(fs, second) == {}
    finally:
        fs.remove_view(first)
        fs.remove_view(second)


def test_conflicts_of_deletions_and_additions(fs: FsProcess, codebase: Path) -> None:
    view_id = fs.new_id("m")
    view = fs.add_view(view_id, codebase, RULES, review=True)
    with fs.sandbox():
        shutil.rmtree(view / "d")  # deletes d/b.txt, which changes underneath
        (view / "c.txt").write_text("mine\n")  # made in the codebase too, meanwhile
    try:
        (codebase / "d" / "b.txt").write_text("changed\n")
        (codebase / "c.txt").write_text("theirs\n")
        (codebase / "d" / "new.txt").write_text("new\n")  # d gained an entry the view lacks
        reply = fs.apply(view_id)
        assert reply.applied == ()
        conflicted = {path for path, _ in reply.conflicts}
        assert {"c.txt", "d/b.txt", "d/new.txt"} <= conflicted
        assert (codebase / "c.txt").read_text() == "theirs\n"
        assert (codebase / "d" / "b.txt").read_text() == "changed\n"
        # Discarding takes the codebase's side: the view sees it again.
        fs.discard(view_id, ("d", "c.txt"))
        with fs.sandbox():
            assert (view / "d" / "b.txt").read_text() == "changed\n"
            assert (view / "c.txt").read_text() == "theirs\n"
        assert listed(fs, view_id) == {}
    finally:
        fs.remove_view(view_id)


def test_a_view_not_under_review_commits_last_writer_wins(fs: FsProcess, codebase: Path) -> None:
    view_id = fs.new_id("a")
    view = fs.add_view(view_id, codebase, RULES)
    with fs.sandbox():
        (view / "a.txt").write_text("mine\n")
    try:
        (codebase / "a.txt").write_text("theirs\n")
        assert fs.apply(view_id).applied == ("a.txt",)
        assert (codebase / "a.txt").read_text() == "mine\n"
    finally:
        fs.remove_view(view_id)


def test_changes_describe_each_entry(fs: FsProcess, codebase: Path) -> None:
    view_id = fs.new_id("m")
    view = fs.add_view(view_id, codebase, RULES, review=True)
    with fs.sandbox():
        (view / "a.txt").write_text("longer content\n")
        os.chmod(view / "d" / "b.txt", 0o600)
        os.mkdir(view / "e", 0o700)
        os.symlink("a.txt", view / "e" / "link")
        (view / "d" / "b.txt").rename(view / "moved")
    try:
        changes = {c.path: c for c in fs.changes(view_id)}
        assert changes["a.txt"] == control.ChangeEntry("a.txt", "modified", "file", 15, 0o644)
        assert changes["d/b.txt"].kind == "deleted"
        assert changes["moved"] == control.ChangeEntry("moved", "added", "file", 4, 0o600)
        assert changes["e"] == control.ChangeEntry("e", "added", "directory", 4096, 0o700)
        assert changes["e/link"].type == "symlink"
        assert [c.path for c in fs.changes(view_id, ("e",))] == ["e", "e/link"]
        # An unchanged copy (written with the same bytes) is no change.
        with fs.sandbox():
            (view / "d" / "c.txt").write_text("x")
        (codebase / "d" / "c.txt").write_text("x")
        assert "d/c.txt" not in {c.path for c in fs.changes(view_id)}
    finally:
        fs.remove_view(view_id)


def test_bases_survive_a_view_taken_over(fs: FsProcess, codebase: Path) -> None:
    """The bases are written down beside the delta: a new fs process still tells a conflict."""
    view_id = fs.new_id("m")
    view = fs.add_view(view_id, codebase, RULES, review=True)
    with fs.sandbox():
        (view / "a.txt").write_text("mine\n")
    try:
        (codebase / "a.txt").write_text("theirs\n")
        assert (fs.delta(view_id) / "bases").stat().st_size > 0
        reply = fs.apply(view_id)
        assert [p for p, _ in reply.conflicts] == ["a.txt"]
    finally:
        fs.remove_view(view_id)


def test_parents_of_a_selected_path_are_committed_with_it(fs: FsProcess, codebase: Path) -> None:
    view_id = fs.new_id("m")
    view = fs.add_view(view_id, codebase, RULES, review=True)
    with fs.sandbox():
        os.makedirs(view / "x" / "y")
        (view / "x" / "y" / "f").write_text("f\n")
        (view / "x" / "g").write_text("g\n")
    try:
        reply = fs.apply(view_id, ("x/y/f",))
        assert reply.applied == ("x", "x/y", "x/y/f")
        assert (codebase / "x" / "y" / "f").read_text() == "f\n"
        assert not (codebase / "x" / "g").exists()
        assert listed(fs, view_id) == {"x/g": "added"}
        with fs.sandbox():
            assert sorted(os.listdir(view / "x")) == ["g", "y"]
    finally:
        fs.remove_view(view_id)


def test_a_checkpoint_and_a_fork_never_change_as_the_view_writes_in_place(
    fs: FsProcess, codebase: Path
) -> None:
    """A manual view's files are linked into its checkpoints and forks: each side copies a
    linked file before it changes it, whatever the change."""
    view_id, child_id = fs.new_id("m"), fs.new_id("fork")
    view = fs.add_view(view_id, codebase, RULES, review=True)
    with fs.sandbox():
        (view / "a.txt").write_text("mine\n")
        (view / "d" / "b.txt").write_text("two, mine\n")
    checkpoint = fs.work / f"{view_id}.cp"
    try:
        captured = fs.capture(view_id, checkpoint)
        assert (captured.entries, captured.bytes) == (3, 15)  # (d, a.txt, d/b.txt)
        fs.capture(view_id, fs.delta(child_id))
        child = fs.add_view(child_id, codebase, RULES, review=True)
        with fs.sandbox():
            with (view / "a.txt").open("a") as handle:
                handle.write("appended\n")
            os.truncate(view / "d" / "b.txt", 3)
            os.chmod(view / "a.txt", 0o600)
            with (child / "d" / "b.txt").open("r+") as handle:
                handle.write("TWO")
            assert (child / "a.txt").read_text() == "mine\n"
            assert (child / "d" / "b.txt").read_text() == "TWO, mine\n"
            assert (view / "d" / "b.txt").read_text() == "two"
        assert (checkpoint / "upper" / "a.txt").read_text() == "mine\n"
        assert (checkpoint / "upper" / "d" / "b.txt").read_text() == "two, mine\n"
        fs.restore(view_id, checkpoint)
        with fs.sandbox():
            assert (view / "a.txt").read_text() == "mine\n"
            assert stat.S_IMODE((view / "a.txt").stat().st_mode) == 0o644
            assert (view / "d" / "b.txt").read_text() == "two, mine\n"
            (view / "a.txt").write_text("after the restore\n")  # (linked again: copied)
        assert (checkpoint / "upper" / "a.txt").read_text() == "mine\n"
        # A file linked into a checkpoint moves into the codebase whole on a commit.
        assert set(fs.apply(view_id).applied) == {"a.txt", "d/b.txt"}
        assert (codebase / "a.txt").read_text() == "after the restore\n"
        assert listed(fs, view_id) == {}
    finally:
        fs.remove_view(view_id)
        if child_id in fs.fds:
            fs.remove_view(child_id)
        shutil.rmtree(checkpoint, ignore_errors=True)
