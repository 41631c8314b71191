"""Applying a view's changes to its codebase: atomically per file, then clearing the delta.

Deletions first (only what the view could see and write: hidden entries stay, and a deletion
that cannot complete because of them is kept so that the view still does not show it), then
every upper entry: directories created, files and symlinks renamed into place (one atomic
rename each). Last committer wins per file. Both walks are iterative, whatever the depth the
sandbox made, and tolerate another view of the same codebase committing at the same time.
A file still open in the sandbox needs nothing special: its next write copies it up again.
A file with several names (hard links made in the sandbox) is committed as a copy and stays
in the delta, so that its names go on sharing one content there; its names share one copy in
the codebase too (a file of 100 MB with 31 names took 3 GB of the codebase, a copy each).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field

from ..types import Permission
from ._host import HostTree, copy_file, link_into, split
from .view import View, join

log = logging.getLogger("agentfense.fs")

_COPY = "commit-copy"  # in the view's orphans directory (whose own names are numbers)


@dataclass
class CommitResult:
    changed: list[str] = field(default_factory=list)  # paths created, replaced or removed
    kept: set[str] = field(default_factory=set)  # deletions the codebase keeps (hidden entries)
    bytes_delta: int = 0  # how the codebase's size changed
    written: int = 0  # bytes of the regular files moved into it
    entries_delta: int = 0  # and its number of entries
    copies: dict[tuple[int, int], str] = field(default_factory=dict)  # a file's copy: where


def _parent(rel: str) -> str:
    return split(rel)[0]


def _delete_lower(view: View, top: str, result: CommitResult) -> bool:
    """Remove ``top`` from the codebase as far as the view may; True when it is gone."""
    lower = view.lower
    blocked: set[str] = set()  # directories that keep something: they stay
    recreated = view.upper.try_lstat(top) is not None  # (else nothing below is either)
    stack: list[tuple[str, bool]] = [(top, False)]
    while stack:
        rel, expanded = stack.pop()
        st = lower.try_lstat(rel)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode) and not expanded:
            stack.append((rel, True))
            for name, child_st in lower.scan(rel):
                child = join(rel, name)
                if view.visible(child, stat.S_ISDIR(child_st.st_mode)):
                    stack.append((child, False))
                else:
                    blocked.add(rel)  # hidden from this view: never touched
            continue
        gone = False
        if stat.S_ISDIR(st.st_mode):
            if rel not in blocked:
                with contextlib.suppress(OSError):  # not empty: another view committed here
                    lower.rmdir(rel)
                    gone = True
        elif recreated and _replaced(view, rel):
            pass  # its new file's rename replaces it at once: never missing meanwhile
        elif view.level(rel) is Permission.WRITE:
            with contextlib.suppress(FileNotFoundError):
                lower.unlink(rel)
            result.bytes_delta -= _file_bytes(st)
            gone = True
        if gone:
            result.changed.append(rel)
            result.entries_delta -= 1
        elif rel != top:
            blocked.add(_parent(rel))
    return top not in blocked and lower.try_lstat(top) is None


def _file_bytes(st: os.stat_result) -> int:
    """What an entry counts for in the codebase's bytes: a regular file's size (a symlink's
    size is its target's length, which the count leaves out)."""
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _replaced(view: View, rel: str) -> bool:
    """The upper tree holds a file (not a directory) at ``rel``: the deletion of the
    codebase's file there is left to that file's rename, so that a commit cut short between
    the two leaves it old or new, never missing."""
    st = view.upper.try_lstat(rel)
    return st is not None and not stat.S_ISDIR(st.st_mode)


def _ensure_dir(lower: HostTree, rel: str, mode: int, result: CommitResult) -> None:
    """``rel`` is a directory of the codebase (created with ``mode``, or given it); its parent
    is there already (the walk goes top down)."""
    target = lower.try_lstat(rel)
    if target is not None and not stat.S_ISDIR(target.st_mode):
        lower.unlink(rel)
        result.bytes_delta -= _file_bytes(target)
        result.entries_delta -= 1
        target = None
    if target is None:
        try:
            lower.mkdir(rel, mode)
            result.changed.append(rel)
            result.entries_delta += 1
        except FileExistsError:  # made meanwhile by another view's commit
            target = lower.lstat(rel)
    if target is not None and stat.S_IMODE(target.st_mode) != mode:
        lower.chmod(rel, mode)
        result.changed.append(rel)


def _apply_upper(view: View, top: str, result: CommitResult) -> None:
    """Move the upper entry ``top`` and everything below it into the codebase. An entry that
    cannot be moved (another view's commit made something else of its path meanwhile) stays
    in the delta for the next commit: nothing is lost, and the rest goes on."""
    waiting: set[str] = set()  # upper directories something had to stay in
    stack: list[tuple[str, bool]] = [(top, False)]
    while stack:
        rel, expanded = stack.pop()
        try:
            _apply_one(view, rel, expanded, stack, waiting, result)
        except OSError as exc:  # (a directory's entries were not taken: they stay too)
            log.warning("view %s: %s stays in the delta: %s", view.id, rel, exc)
            waiting.add(_parent(rel))


def _apply_one(
    view: View,
    rel: str,
    expanded: bool,
    stack: list[tuple[str, bool]],
    waiting: set[str],
    result: CommitResult,
) -> None:
    """One step of :func:`_apply_upper`: an entry, or a directory whose entries are done."""
    lower, upper = view.lower, view.upper
    st = upper.lstat(rel)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        if expanded:
            if rel in waiting:
                waiting.add(_parent(rel))
            else:
                upper.rmdir(rel)
            return
        if lower.try_lstat(rel) is None and _move_whole(view, rel, result):
            return
        _ensure_dir(lower, rel, stat.S_IMODE(mode), result)
        stack.append((rel, True))
        stack.extend((join(rel, name), False) for name in upper.listdir(rel))
        return
    target = lower.try_lstat(rel)
    if target is not None and stat.S_ISDIR(target.st_mode):
        try:
            lower.rmdir(rel)  # what the view could delete below went with its deletion
            result.entries_delta -= 1
        except OSError:
            waiting.add(_parent(rel))  # hidden entries remain: the file waits in the delta
            return
        target = None
    result.changed.append(rel)
    written = st.st_size if stat.S_ISREG(mode) else 0
    if stat.S_ISREG(mode) and st.st_nlink > 1:
        # Copied beside the delta, out of every view's sight, then renamed in: a commit cut
        # short leaves no partial copy in the codebase (the next copy replaces it). Its
        # other names link to that copy.
        first = result.copies.get((st.st_dev, st.st_ino))
        try:
            if first is not None and link_into(lower, first, view.orphans, _COPY):
                written = 0
            else:
                copy_file(upper, rel, view.orphans, _COPY)
            view.orphans.rename(_COPY, rel, lower)
        except OSError:
            with contextlib.suppress(OSError):
                view.orphans.unlink(_COPY)  # (a full disk): its room back
            raise
        result.copies.setdefault((st.st_dev, st.st_ino), rel)
        waiting.add(_parent(rel))
    else:
        upper.rename(rel, rel, lower)
    result.written += written
    result.bytes_delta += (st.st_size if stat.S_ISREG(mode) else 0) - (
        target.st_size if target is not None and stat.S_ISREG(target.st_mode) else 0
    )
    if target is None:
        result.entries_delta += 1


def _move_whole(view: View, rel: str, result: CommitResult) -> bool:
    """A directory the codebase has nothing at: moved in with everything below it, in one
    rename (50,000 new entries cost one rename and a look at each, not a mkdir, a rename and
    an rmdir each). Not when a file below has other names (they stay in the delta)."""
    sizes = entries = 0
    pending = [rel]
    while pending:
        current = pending.pop()
        for name, st in view.upper.scan(current):
            entries += 1
            if stat.S_ISDIR(st.st_mode):
                pending.append(join(current, name))
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    return False
                sizes += st.st_size
    try:
        view.upper.rename(rel, rel, view.lower)
    except OSError:
        return False  # made meanwhile by another view's commit: entry by entry, then
    result.changed.append(rel)  # (nothing below it was in the codebase: no view saw any)
    result.entries_delta += entries + 1
    result.bytes_delta += sizes
    result.written += sizes
    return True


def commit(view: View) -> CommitResult:
    """Apply the view's delta to the codebase and clear it.

    Safe to ask again after it stopped halfway (the process died): the deletions done are
    written down (what the view still keeps deleted) before anything of the upper tree moves
    in, so a second pass never deletes what the first one brought in; deletions and moves
    are each harmless to do twice. A file the view replaced (deleted, then made again: an
    editor's save) is not deleted first: its rename replaces it, so a commit cut short (a
    killed server, whose sandboxes' deltas are gone with it) leaves it old or new.
    """
    result = CommitResult()
    stale = view.orphans.try_lstat(_COPY)
    if stale is not None:  # a copy a commit cut short left (counted when the view was taken over)
        view.orphans.unlink(_COPY)
        view.orphan_bytes = max(0, view.orphan_bytes - stale.st_size)
    for rel in sorted(view.deleted.paths, key=lambda p: (p.count("/"), p)):
        if not _delete_lower(view, rel, result):
            result.kept.add(rel)
    # A kept deletion that the view recreated is no deletion any more: it sees the new entry.
    result.kept = {rel for rel in result.kept if view.upper.try_lstat(rel) is None}
    if view.deleted.paths != result.kept:  # the usual empty-to-empty needs no file write
        view.deleted.replace(result.kept)  # (if this fails, nothing moved: asked again later)
    for name in view.upper.listdir(""):
        _apply_upper(view, name, result)
    view.upper_empty = not view.upper.listdir("")
    view.usage.add(result.bytes_delta, result.entries_delta)
    view.delta_bytes = view.delta_entries = 0
    view.carried_orphan_bytes = view.orphan_bytes
    return result
