"""The commit as a unit, on host directories (no FUSE): what it does when it is stopped
halfway (the fs process killed) and asked again by the process that takes the view over."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentfense.fs import commit as commit_module
from agentfense.fs.view import View
from agentfense.policy import Policy
from agentfense.types import Permission, PermissionRule

WRITE_ALL = Policy([PermissionRule("**", Permission.WRITE)])


class Killed(BaseException):
    """The process died here (nothing catches it, as nothing catches SIGKILL)."""


def _view(tmp_path: Path) -> View:
    return View("v", lower=tmp_path / "lower", delta=tmp_path / "delta", policy=WRITE_ALL,
                uid=0, gid=0)  # fmt: skip


def _rewrite(view: View, rel: str, content: bytes) -> None:
    """What ``rm rel; echo ... > rel`` does to the view: a deletion, then a new file."""
    view.forget_lower(rel)
    view.prepare_new(rel)
    fd = view.upper.open(rel, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, content)
    os.close(fd)
    view.created(rel)


@pytest.mark.parametrize("moved_before_death", [0, 1, 5, 9])
def test_a_commit_stopped_halfway_and_asked_again_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moved_before_death: int
) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    names = [f"f{i}" for i in range(10)]
    for name in names:
        (lower / name).write_bytes(b"old\n")
    view = _view(tmp_path)
    for name in names:
        _rewrite(view, name, b"new\n")

    real: Callable[..., Any] = commit_module._apply_one
    calls = 0

    def dies(*args: Any) -> None:
        nonlocal calls
        if calls == moved_before_death:
            raise Killed
        calls += 1
        real(*args)

    monkeypatch.setattr(commit_module, "_apply_one", dies)
    with pytest.raises(Killed):
        commit_module.commit(view)
    monkeypatch.setattr(commit_module, "_apply_one", real)
    # Each file old or new, never missing (a killed server's delta would be gone with it).
    assert {(lower / n).read_bytes() for n in names} <= {b"old\n", b"new\n"}

    # The next process takes the view over from what is on disk, and commits again.
    view.close()
    again = _view(tmp_path)
    commit_module.commit(again)
    assert {n: (lower / n).read_bytes() for n in names} == dict.fromkeys(names, b"new\n")
    assert list((tmp_path / "delta" / "upper").iterdir()) == []
    assert not again.deleted.paths


def test_a_commit_killed_while_copying_a_file_with_two_names_leaves_no_copy_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a file is committed as a copy: one cut short is never in the codebase (where
    every view and the owner's listing would see it), and the next process's commit neither
    keeps it nor counts it against the view."""
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "a").write_bytes(b"old\n")
    view = _view(tmp_path)
    _rewrite(view, "a", b"new\n" * 1000)
    view.upper.link("a", "b")
    view.created("b")

    def dies(src: Any, src_rel: str, dst: Any, dst_rel: str) -> None:
        fd = dst.open(dst_rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"new\n")  # a quarter of the copy, then the process dies
        os.close(fd)
        raise Killed

    monkeypatch.setattr(commit_module, "copy_file", dies)
    with pytest.raises(Killed):
        commit_module.commit(view)
    monkeypatch.undo()
    assert sorted(os.listdir(lower)) == ["a"]
    assert (lower / "a").read_bytes() == b"old\n"

    view.close()
    again = _view(tmp_path)
    again.count_orphans()
    commit_module.commit(again)
    assert sorted(os.listdir(lower)) == ["a", "b"]
    assert (lower / "a").read_bytes() == (lower / "b").read_bytes() == b"new\n" * 1000
    assert os.listdir(tmp_path / "delta" / "orphans") == []
    assert again.orphan_bytes == again.carried_orphan_bytes == 0
