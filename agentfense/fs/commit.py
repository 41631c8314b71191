"""Applying a view's changes to its codebase: atomically per file, then clearing the delta.

Deletions first (only what the view could see and write: hidden entries stay, and a deletion
that cannot complete because of them is kept so that the view still does not show it), then
every upper entry: directories created, files and symlinks renamed into place (one atomic
rename each; a file still open for writing is copied instead and stays in the delta). Last
committer wins per file.
"""

from __future__ import annotations

import contextlib
import secrets
import stat
from dataclasses import dataclass, field

from ..types import Permission
from ._host import copy_file, split
from .view import UPPER, View, join


@dataclass
class CommitResult:
    changed: list[str] = field(default_factory=list)  # paths created, replaced or removed
    kept_deleted: set[str] = field(default_factory=set)


def _delete_lower(view: View, rel: str, result: CommitResult) -> bool:
    """Remove ``rel`` from the codebase as far as the view may; True when it is gone."""
    st = view.lower.try_lstat(rel)
    if st is None:
        return True
    if stat.S_ISDIR(st.st_mode):
        gone = True
        for name in view.lower.listdir(rel):
            child = join(rel, name)
            child_st = view.lower.lstat(child)
            if view.visible(child, stat.S_ISDIR(child_st.st_mode)):
                gone = _delete_lower(view, child, result) and gone
            else:
                gone = False  # hidden from this view: never touched
        if not gone:
            return False
        view.lower.rmdir(rel)
    else:
        if view.level(rel) is not Permission.WRITE:
            return False
        view.lower.unlink(rel)
    result.changed.append(rel)
    return True


def _apply_upper(view: View, rel: str, result: CommitResult) -> bool:
    """Move the upper entry ``rel`` (and below) into the codebase; True if upper is now empty."""
    st = view.upper.lstat(rel)
    mode = st.st_mode
    target = view.lower.try_lstat(rel)
    if stat.S_ISDIR(mode):
        if target is not None and not stat.S_ISDIR(target.st_mode):
            view.lower.unlink(rel)
            target = None
        if target is None:
            parent, _ = split(rel)
            view.lower.makedirs(parent)
            view.lower.mkdir(rel, stat.S_IMODE(mode))
            result.changed.append(rel)
        elif stat.S_IMODE(target.st_mode) != stat.S_IMODE(mode):
            view.lower.chmod(rel, stat.S_IMODE(mode))
            result.changed.append(rel)
        empty = True
        for name in view.upper.listdir(rel):
            empty = _apply_upper(view, join(rel, name), result) and empty
        if empty:
            view.upper.rmdir(rel)
        return empty
    if target is not None and stat.S_ISDIR(target.st_mode):
        try:
            view.lower.rmdir(rel)  # what the view could delete below went with its deletion
        except OSError:
            return False  # hidden entries remain there: the file waits in the delta
    parent, _ = split(rel)
    view.lower.makedirs(parent)
    result.changed.append(rel)
    if view.writers.get(st.st_ino):
        # Still open for writing: commit a copy, keep the file (and its writers) in the delta.
        # The copy's name is unguessable: a sandbox may own any name it can guess.
        tmp = join(parent, f".agentfense-commit-{secrets.token_hex(8)}")
        copy_file(view.upper, rel, view.lower, tmp)
        view.lower.rename(tmp, rel)
        return False
    view.upper.rename(rel, rel, view.lower)
    return True


def commit(view: View) -> CommitResult:
    """Apply the view's delta to the codebase and clear it."""
    result = CommitResult()
    for rel in sorted(view.deleted, key=lambda p: (p.count("/"), p)):
        if not _delete_lower(view, rel, result):
            result.kept_deleted.add(rel)
    # A kept deletion that the view recreated is no deletion any more: it sees the new entry.
    result.kept_deleted = {rel for rel in result.kept_deleted if view.upper.try_lstat(rel) is None}
    for name in view.upper.listdir(""):
        _apply_upper(view, name, result)
    view.upper_empty = not view.upper.listdir("")
    if view.deleted != result.kept_deleted:  # the usual empty-to-empty needs no file write
        view.deleted = set(result.kept_deleted)
        with contextlib.suppress(OSError):
            view.save_deleted()
    return result


__all__ = ["UPPER", "CommitResult", "commit"]
