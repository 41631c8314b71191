"""A view's bookkeeping against a model, on plain directories (no FUSE, no fs process).

A sandbox's changes are made through the View methods that ``operations.py`` calls for each
request (create, write, mkdir, unlink, rmdir, rename, a rewrite: delete then create; a commit
at any point), under a write-all policy and under a mixed one (a hidden subtree, hidden files
in writable directories, read-only files; symlinks among the files). After each step the
view shows exactly the model; a fresh view taken over from the delta on disk (its deletion
log replayed) shows the same; after a commit the codebase holds the model, what the policy
hides is untouched, the delta holds only what could not be committed, and the codebase's
usage is what a count finds.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from agentfense.fs import _usage
from agentfense.fs.commit import commit
from agentfense.fs.control import Limits
from agentfense.fs.view import View
from agentfense.policy import Policy
from agentfense.types import Permission, PermissionRule


@dataclass(frozen=True)
class Link:
    target: str


Tree = dict[str, bytes | Link | None]
"""Relative path -> a file's content, a symlink, or ``None`` for a directory."""

WRITE_ALL = Policy([PermissionRule("**", Permission.WRITE)])
MIXED = Policy(
    [
        PermissionRule("**", Permission.WRITE),
        PermissionRule("secret", Permission.NONE),
        PermissionRule("secret/**", Permission.NONE),
        PermissionRule("**/*.key", Permission.NONE),
        PermissionRule("ro.txt", Permission.READ),
        PermissionRule("a/ro.txt", Permission.READ),
    ]
)
# Every path the sandbox touches (never a protected one): names a, b, c, three deep.
NAMES = ("a", "b", "c")
PATHS = tuple(
    "/".join(parts) for depth in (1, 2, 3) for parts in itertools.product(NAMES, repeat=depth)
)
START: Tree = {
    **{"a": None, "a/a": b"aa", "a/b": b"ab", "a/c": None, "a/c/a": b"aca", "b": b"b"},
    **{"c": None, "c/a": None, "c/a/a": b"caa", "c/a/b": b"cab"},
    **{"c/b": Link("../a/b"), "c/c": Link("x" * 3000)},
}
# Under the mixed policy, beside START: hidden (never shown, never touched) and read-only.
HIDDEN: Tree = {"secret": None, "secret/s": b"s", "a/k.key": b"k", "c/a/k.key": b"k2"}
READ_ONLY: Tree = {"ro.txt": b"ro", "a/ro.txt": b"ro2"}
# Each depth as likely as the others: the few shallow paths meet often.
A_PATH = st.one_of(
    *(st.sampled_from([rel for rel in PATHS if rel.count("/") == depth]) for depth in (0, 1, 2))
)
TARGETS = st.sampled_from([Link("a"), Link("../b"), Link("t" * 2000)])
CONTENTS = st.sampled_from([b"", b"x", b"hello\n", b"y" * 5000])


def parent_of(rel: str) -> str:
    return rel.rpartition("/")[0]


def under(rel: str, top: str) -> bool:
    return rel == top or rel.startswith(top + "/")


def ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def write_tree(root: Path, tree: Tree) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in sorted(tree.items()):
        if content is None:
            (root / rel).mkdir()
        elif isinstance(content, Link):
            (root / rel).symlink_to(content.target)
        else:
            (root / rel).write_bytes(content)


def host_tree(root: Path) -> Tree:
    tree: Tree = {}
    for directory, dirs, files in os.walk(root):
        base = os.path.relpath(directory, root)
        for name in dirs + files:
            path = os.path.join(directory, name)
            rel = os.path.normpath(os.path.join(base, name))
            if os.path.islink(path):
                tree[rel] = Link(os.readlink(path))
            elif name in dirs:
                tree[rel] = None
            else:
                tree[rel] = Path(path).read_bytes()
    return tree


def shown(view: View) -> Tree:
    """What the view shows, through its own listing and read path."""
    tree: Tree = {}
    pending = [""]
    while pending:
        current = pending.pop()
        for rel, entry in view.visible_children(current):
            if entry.is_dir:
                tree[rel] = None
                pending.append(rel)
            elif stat.S_ISLNK(entry.st.st_mode):
                tree[rel] = Link(view.readlink(rel, entry))
            elif view.level(rel).rank >= Permission.READ.rank:
                fd = view.open_file(rel, os.O_RDONLY)
                try:
                    tree[rel] = os.pread(fd, 1 << 20, 0)
                finally:
                    os.close(fd)
    return tree


class ViewModel(RuleBasedStateMachine):
    policy: ClassVar[Policy] = WRITE_ALL
    hidden: ClassVar[Tree] = {}
    read_only: ClassVar[Tree] = {}

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(os.environ["VIEW_MODEL_TMP"]) / f"run{next(_runs)}"
        self.lower = self.root / "lower"
        self.delta = self.root / "delta"
        write_tree(self.lower, {**START, **self.hidden, **self.read_only})
        self.view = self._view()
        self.view.usage.count(wait=10)
        assert self.view.usage.known
        self.model: Tree = {**START, **self.read_only}

    def _view(self) -> View:
        return View("v", lower=self.lower, delta=self.delta, policy=self.policy,
                    uid=0, gid=0, limits=Limits())  # fmt: skip

    def teardown(self) -> None:
        self.view.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- what the sandbox does, as operations.py does it ----------------------------------------

    def _creatable(self, rel: str) -> bool:
        return (
            rel not in self.model
            and self.model.get(parent_of(rel), None) is None
            and (parent_of(rel) == "" or parent_of(rel) in self.model)
        )

    def _write(self, rel: str, content: bytes) -> None:
        """setattr(size=0) then write: copied up, charged, written in the upper tree."""
        view = self.view
        entry = view.copy_up(rel)
        fd = view.upper.open(rel, os.O_WRONLY)
        try:
            view.charge(0 - entry.st.st_size)
            os.ftruncate(fd, 0)
            view.charge(len(content) - os.fstat(fd).st_size)
            os.pwrite(fd, content, 0)
        finally:
            os.close(fd)

    def _new_file(self, rel: str, content: bytes) -> None:
        view = self.view
        assert view.policy.level(rel) is Permission.WRITE
        assert view.locate(rel) is None
        view.prepare_new(rel)
        os.close(view.upper.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        view.created(rel)
        self._write(rel, content)
        self.model[rel] = content

    def _remove(self, rel: str) -> None:
        entry = self.view.locate(rel)
        assert entry is not None
        self.view.remove(rel, entry)
        del self.model[rel]

    @rule(rel=A_PATH, content=CONTENTS)
    def create(self, rel: str, content: bytes) -> None:
        if self._creatable(rel):
            self._new_file(rel, content)

    @rule(rel=A_PATH)
    def mkdir(self, rel: str) -> None:
        if self._creatable(rel):
            self.view.prepare_new(rel)
            self.view.upper.mkdir(rel, 0o755)
            self.view.created(rel)
            self.model[rel] = None

    @rule(rel=A_PATH, link=TARGETS)
    def symlink(self, rel: str, link: Link) -> None:
        if self._creatable(rel):
            self.view.prepare_new(rel)
            self.view.upper.symlink(link.target, rel)
            self.view.created(rel)
            self.model[rel] = link

    @rule(rel=A_PATH, content=CONTENTS)
    def write(self, rel: str, content: bytes) -> None:
        if isinstance(self.model.get(rel), bytes):
            self._write(rel, content)
            self.model[rel] = content

    @rule(rel=A_PATH)
    def unlink(self, rel: str) -> None:
        if self.model.get(rel) is not None:
            self._remove(rel)

    @rule(rel=A_PATH)
    def rmdir(self, rel: str) -> None:
        if rel in self.model and self.model[rel] is None:
            has_children = any(parent_of(other) == rel for other in self.model)
            assert self.view.has_visible_children(rel) == has_children
            if not has_children:
                self._remove(rel)

    @rule(rel=A_PATH, content=CONTENTS)
    def rewrite(self, rel: str, content: bytes) -> None:
        """An editor's save: the file removed, then made again."""
        if isinstance(self.model.get(rel), bytes):
            self._remove(rel)
            self._new_file(rel, content)

    @rule(old=A_PATH, new=A_PATH)
    def rename(self, old: str, new: str) -> None:
        model = self.model
        if old not in model or old == new or under(new, old) or parent_of(new) not in {"", *model}:
            return
        if parent_of(new) and model[parent_of(new)] is not None:
            return
        if any(under(rel, old) for rel in self.read_only):
            return  # a directory is moved only with everything in it (EACCES)
        is_dir = model[old] is None
        if new in model:
            if (model[new] is None) != is_dir:
                return
            if is_dir and any(parent_of(other) == new for other in model):
                return
            self._remove(new)  # as operations.py: the target goes, then the rename
        self.view.check_length(new)
        self.view.rename(old, new)
        moved = {rel: content for rel, content in model.items() if under(rel, old)}
        for rel in moved:
            del model[rel]
        model.update({new + rel[len(old) :]: content for rel, content in moved.items()})

    @rule()
    def commit(self) -> None:
        before = dict(self.model)
        result = commit(self.view)
        assert shown(self.view) == before
        lower = host_tree(self.lower)
        upper = host_tree(self.delta / "upper")
        kept_dirs = {a for rel in self.hidden for a in ancestors(rel)}
        for rel, content in self.hidden.items():
            assert lower.get(rel, "missing") == content, f"hidden {rel} touched"
        for rel, content in lower.items():
            if rel in self.hidden:
                continue
            if rel in self.model and not (rel in kept_dirs and self.model[rel] is not None):
                assert content == self.model[rel], f"{rel} in the codebase differs"
            else:  # kept for what the view cannot see, or in conflict with a file it made
                assert rel in kept_dirs, f"{rel} left in the codebase"
                assert content is None, f"{rel} left in the codebase"
        for rel, content in self.model.items():
            if rel not in lower or lower[rel] != content:
                # Only a file the view made where a directory keeps hidden entries waits.
                assert rel in kept_dirs, f"{rel} not committed"
                assert content is not None, f"{rel} not committed"
                assert upper.get(rel) == content
        waiting = {rel for rel, content in upper.items() if content is not None}
        for rel in waiting:  # a file the view made where the codebase keeps a directory
            assert rel in kept_dirs, f"{rel} stays in the delta after a commit"
            assert upper[rel] == self.model.get(rel), f"{rel} stays in the delta after a commit"
        for rel in upper.keys() - waiting:  # and the directories above it, only
            assert any(under(file, rel) for file in waiting), f"{rel} stays in the delta"
        if not self.hidden:
            assert upper == {}
            assert not self.view.deleted.paths
            assert not result.kept
        # The codebase's usage follows every commit as a count would find it.
        assert (self.view.usage.bytes, self.view.usage.entries) == _usage._walk(self.lower)
        assert self.view.delta_bytes == self.view.delta_entries == 0

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def shows_the_model(self) -> None:
        assert shown(self.view) == self.model

    @invariant()
    def each_path_looked_up_is_the_model_s(self) -> None:
        """What a LOOKUP of any name finds (``locate``), listed or not."""
        for rel in PATHS:
            entry = self.view.locate(rel)
            if rel not in self.model:
                assert entry is None, f"{rel} found"
                continue
            assert entry is not None, f"{rel} not found"
            content = self.model[rel]
            assert entry.is_dir == (content is None)
            assert stat.S_ISLNK(entry.st.st_mode) == isinstance(content, Link)

    @invariant()
    def a_view_taken_over_shows_the_same(self) -> None:
        again = self._view()
        try:
            assert again.deleted.paths == self.view.deleted.paths
            assert shown(again) == self.model
        finally:
            again.close()

    @invariant()
    def protected_entries_stay_in_the_codebase(self) -> None:
        for rel, content in {**self.hidden, **self.read_only}.items():
            path = self.lower / rel
            assert (path.read_bytes() if content is not None else path.is_dir()) == (
                content if content is not None else True
            )


_runs = itertools.count()


class MixedViewModel(ViewModel):
    policy = MIXED
    hidden = HIDDEN
    read_only = READ_ONLY


_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEW_MODEL_TMP", str(tmp_path))


TestWriteAll = ViewModel.TestCase
TestWriteAll.settings = _SETTINGS
TestMixedPolicy = MixedViewModel.TestCase
TestMixedPolicy.settings = _SETTINGS


@pytest.fixture
def mixed() -> Iterator[ViewModel]:
    machine = MixedViewModel()
    yield machine
    machine.teardown()


def _steps(machine: ViewModel, *steps: tuple[str, tuple[object, ...]]) -> None:
    """Run ``steps`` (rule name, arguments), checking every invariant after each."""
    for name, args in steps:
        getattr(machine, name)(*args)
        machine.shows_the_model()
        machine.each_path_looked_up_is_the_model_s()
        machine.a_view_taken_over_shows_the_same()
        machine.protected_entries_stay_in_the_codebase()


def test_a_file_made_where_a_hidden_entry_keeps_a_directory_waits_in_the_delta(
    mixed: ViewModel,
) -> None:
    """``c/a`` holds a hidden file: the view empties and removes ``c/a``, makes a file
    there and commits. The directory stays in the codebase (hidden entries are never touched), the
    file waits in the delta and the view goes on showing it; removed again, ``c/a`` stays
    hidden; made a directory again, it is committed into the kept one."""
    _steps(
        mixed,
        ("unlink", ("c/a/a",)),
        ("unlink", ("c/a/b",)),
        ("rmdir", ("c/a",)),
        ("create", ("c/a", b"file")),
        ("commit", ()),
        ("commit", ()),
        ("write", ("c/a", b"again")),
        ("commit", ()),
    )
    assert (mixed.delta / "upper" / "c" / "a").read_bytes() == b"again"
    assert (mixed.lower / "c" / "a" / "k.key").read_bytes() == b"k2"
    _steps(
        mixed,
        ("unlink", ("c/a",)),
        ("commit", ()),
        ("mkdir", ("c/a",)),
        ("create", ("c/a/c", b"new")),
        ("commit", ()),
    )
    assert (mixed.lower / "c" / "a" / "c").read_bytes() == b"new"
    assert (mixed.lower / "c" / "a" / "k.key").read_bytes() == b"k2"


def test_a_directory_with_hidden_entries_renamed_leaves_them_where_they_were(
    mixed: ViewModel,
) -> None:
    _steps(
        mixed,
        ("unlink", ("b",)),
        ("rename", ("c", "b")),
        ("commit", ()),
        ("rename", ("b/a", "a/c/b")),
        ("rewrite", ("a/c/b/b", b"x")),
        ("commit", ()),
    )
    assert (mixed.lower / "a" / "c" / "b" / "b").read_bytes() == b"x"
    assert sorted(os.listdir(mixed.lower / "c" / "a")) == ["k.key"]
    assert not (mixed.lower / "b" / "a").exists()


def test_a_directory_deleted_among_many_hides_what_was_below_it() -> None:
    """Past a few deletions a lookup tests each ancestor of the path: one deleted directory
    still hides every entry below it, listed or looked up by name."""
    machine = ViewModel()
    try:
        _steps(
            machine,
            *(("unlink", (rel,)) for rel in ("a/a", "a/b", "a/c/a", "b", "c/b", "c/c", "c/a/a")),
            ("rename", ("c", "b")),
            ("mkdir", ("c",)),
        )
        assert len(machine.view.deleted.paths) >= 8
        _steps(machine, ("mkdir", ("c/b",)), ("commit", ()))
    finally:
        machine.teardown()
