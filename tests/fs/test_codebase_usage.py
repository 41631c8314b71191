"""A codebase's usage (bytes of its files, number of its entries) against its caps, on plain
directories (no FUSE): each commit keeps it what a count of the codebase finds, and the caps
refuse exactly what would take the codebase past them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agentfense.fs._usage import _walk
from agentfense.fs.commit import commit
from agentfense.fs.control import Limits
from agentfense.fs.view import View
from agentfense.policy import Policy
from agentfense.types import Permission, PermissionRule

WRITE_ALL = Policy([PermissionRule("**", Permission.WRITE)])
NO_KEYS = Policy(
    [PermissionRule("**", Permission.WRITE), PermissionRule("**/*.key", Permission.NONE)]
)


def _view(tmp_path: Path, policy: Policy = WRITE_ALL, limits: Limits | None = None) -> View:
    view = View("v", lower=tmp_path / "lower", delta=tmp_path / "delta", policy=policy,
                uid=0, gid=0, limits=limits or Limits())  # fmt: skip
    view.usage.count(wait=10)
    assert view.usage.known
    return view


def _file(view: View, rel: str, content: bytes) -> None:
    """A new file, made and written as operations.py makes it."""
    view.prepare_new(rel)
    os.close(view.upper.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    view.created(rel)
    view.charge(len(content))
    fd = view.upper.open(rel, os.O_WRONLY)
    os.pwrite(fd, content, 0)
    os.close(fd)


def _dir(view: View, rel: str) -> None:
    view.prepare_new(rel)
    view.upper.mkdir(rel, 0o755)
    view.created(rel)


def _symlink(view: View, rel: str, target: str) -> None:
    view.prepare_new(rel)
    view.upper.symlink(target, rel)
    view.created(rel)


def _remove(view: View, rel: str) -> None:
    entry = view.locate(rel)
    assert entry is not None
    view.remove(rel, entry)


def _remove_tree(view: View, rel: str) -> None:
    """``rm -rf``: the entries below first, then the directory."""
    pending, order = [rel], []
    while pending:
        current = pending.pop()
        order.append(current)
        pending.extend(child for child, entry in view.visible_children(current) if entry.is_dir)
    for directory in reversed(order):
        for child, entry in list(view.visible_children(directory)):
            if not entry.is_dir:
                _remove(view, child)
        _remove(view, directory)


def _committed(view: View) -> None:
    commit(view)
    assert (view.usage.bytes, view.usage.entries) == _walk(view.lower.root)


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    root = tmp_path / "lower"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_bytes(b"x" * 300)
    (root / "src" / "secret.key").write_bytes(b"k" * 50)  # hidden under NO_KEYS
    (root / "README").write_bytes(b"r" * 100)
    os.symlink("src/pkg/mod.py", root / "link")
    return root


def test_usage_follows_a_series_of_commits_as_a_count_would(tmp_path: Path, lower: Path) -> None:
    view = _view(tmp_path, NO_KEYS)
    assert (view.usage.bytes, view.usage.entries) == (450, 6)
    _file(view, "new.txt", b"n" * 1000)
    _dir(view, "build")
    _dir(view, "build/out")
    _file(view, "build/out/a.o", b"o" * 70)
    _committed(view)  # new entries, and a new tree moved in whole
    _remove(view, "README")
    _file(view, "README", b"R" * 10)  # an editor's save: replaced, not deleted
    _committed(view)
    view.rename("build", "dist")
    _remove_tree(view, "src")  # keeps src/ for its hidden key
    _committed(view)
    _remove(view, "new.txt")
    _dir(view, "new.txt")  # a file replaced by a directory
    _remove(view, "dist/out/a.o")
    _file(view, "dist/out/a.o", b"p" * 5)
    view.copy_up("dist/out/a.o")
    view.upper.link("dist/out/a.o", "dist/out/b.o")  # two names: committed as copies
    view.created("dist/out/b.o")
    _committed(view)
    _committed(view)  # (the linked file stays in the delta: committed again, same size)
    _remove(view, "link")
    _committed(view)
    assert view.usage.entries == len(list(lower.rglob("*")))


def test_deleting_a_symlink_leaves_the_byte_count_alone(tmp_path: Path, lower: Path) -> None:
    """A symlink holds no file bytes in the count; its deletion must not take its target's
    length off it, or a sandbox could make and delete links until the byte cap is gone."""
    cap = 460
    view = _view(tmp_path, limits=Limits(codebase_bytes=cap))
    for i in range(20):
        _symlink(view, f"l{i}", "t" * 4000)
        _committed(view)
        _remove(view, f"l{i}")
        _committed(view)
    assert view.usage.bytes == 450
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)) as refused:
        view.charge(cap - 450 + 1)
    assert refused.value.errno == errno.ENOSPC


def test_a_symlink_replaced_by_a_directory_leaves_the_byte_count_alone(
    tmp_path: Path, lower: Path
) -> None:
    view = _view(tmp_path)
    _remove(view, "link")
    _dir(view, "link")
    _committed(view)
    assert view.usage.bytes == 450


def test_the_caps_refuse_what_would_pass_them_after_commits(tmp_path: Path, lower: Path) -> None:
    view = _view(tmp_path, limits=Limits(codebase_bytes=1000, codebase_entries=9))
    _file(view, "a", b"a" * 400)  # 850 bytes, 7 entries
    _committed(view)
    _file(view, "b", b"b" * 100)  # 950, 8
    _committed(view)
    view.charge(50)  # exactly the cap: allowed
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)) as refused:
        view.charge(1)
    assert refused.value.errno == errno.ENOSPC
    assert view.over_limit
    assert view.delta_bytes == 50  # the refused byte was not counted
    view.count_entry()  # the ninth entry: allowed
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)) as refused:
        view.count_entry()
    assert refused.value.errno == errno.ENOSPC
    assert view.delta_entries == 1
    # Removing frees room once committed (and the commit clears what was charged above).
    _remove(view, "a")
    _committed(view)
    assert (view.usage.bytes, view.usage.entries) == (550, 7)
    view.charge(450)
    view.count_entry()
    view.count_entry()
