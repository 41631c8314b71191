"""Reviewing a view's changes: what differs from its codebase, applying some of them (checked
for conflicts), discarding some of them.

The view's tree V (what the sandbox sees) and the codebase's tree C (as the same policy shows
it) differ at a set of paths, each one :class:`Change`: ``added`` (in V only), ``deleted``
(in C only), ``type_changed`` (both, a file against a directory, say) or ``modified`` (both,
of one type: another content, symlink target or mode; a directory only by its mode). Every
path is its own change: a deleted directory is listed with everything below it. A file
copied up but still equal to the codebase's is no change.

A commit applies a selection of changes to C, each file by one atomic rename, and leaves V as
it was; a discard makes V equal to C at the selected paths (C untouched). Both then rebuild
what the delta must keep: the upper tree without what they took out, and the deletions as
the tops of what V still lacks of C (so that nothing placed in C is hidden from V, and
nothing V lacks shows again).

A selected path S brings every change at or below it, and, for a commit, the changes of its
ancestors that make room for it (a directory V added, or made of a file). A commit checks each
change against its base (``_bases.py``): a path whose codebase entry changed since the view
first changed it is a conflict, reported and left in the delta, unless ``overwrite``. Walks
are iterative and cost what the delta holds and what it deleted; nothing here recurses.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import errno
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ._bases import ABSENT, signature
from ._host import copy_file, link_into
from .view import View, join

_COPY = "commit-copy"  # in the view's orphans directory (as ``commit.py`` names it)
_CHUNK = 1 << 16
MAX_LISTED = 50_000  # changes a listing returns at most (it says how many there were)


class Kind(enum.StrEnum):
    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"
    TYPE_CHANGED = "type_changed"


class FileType(enum.StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"


def file_type(mode: int) -> FileType:
    if stat.S_ISREG(mode):
        return FileType.FILE
    if stat.S_ISDIR(mode):
        return FileType.DIRECTORY
    if stat.S_ISLNK(mode):
        return FileType.SYMLINK
    return FileType.OTHER


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    kind: Kind
    type: FileType  # the view's entry's (the codebase's, when deleted)
    size: int
    mode: int  # permission bits, likewise

    @property
    def in_view(self) -> bool:
        return self.kind is not Kind.DELETED


@dataclass
class Survey:
    """Every change of the view, by path, and the upper copies equal to the codebase."""

    changes: dict[str, Change] = field(default_factory=dict)
    same: list[str] = field(default_factory=list)
    view_dirs: set[str] = field(default_factory=set)  # changed paths V holds as directories
    # The upper tree's names of each of its files, by inode: more than one is a link the
    # sandbox made (a checkpoint's or a fork's links to it are not in the upper tree).
    names: Counter[int] = field(default_factory=Counter)

    def linked_by_sandbox(self, st: os.stat_result) -> bool:
        return self.names[st.st_ino] > 1


def _same_content(view: View, rel: str) -> bool:
    """Whether the upper file ``rel`` holds the codebase's file's bytes (equal sizes)."""
    a = view.upper.open(rel, os.O_RDONLY | os.O_NONBLOCK)
    try:
        b = view.lower.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        try:
            while True:
                left, right = os.read(a, _CHUNK), os.read(b, _CHUNK)
                if left != right:
                    return False
                if not left:
                    return True
        finally:
            os.close(b)
    finally:
        os.close(a)


def _compare(view: View, rel: str, v: os.stat_result, c: os.stat_result | None) -> Kind | None:
    if c is None:
        return Kind.ADDED
    if stat.S_IFMT(v.st_mode) != stat.S_IFMT(c.st_mode):
        return Kind.TYPE_CHANGED
    if stat.S_IMODE(v.st_mode) != stat.S_IMODE(c.st_mode) and not stat.S_ISLNK(v.st_mode):
        return Kind.MODIFIED
    if stat.S_ISDIR(v.st_mode):
        return None
    if stat.S_ISLNK(v.st_mode):
        return None if view.upper.readlink(rel) == view.lower.readlink(rel) else Kind.MODIFIED
    if v.st_size != c.st_size or not _same_content(view, rel):
        return Kind.MODIFIED
    return None


def _change(rel: str, kind: Kind, st: os.stat_result) -> Change:
    return Change(rel, kind, file_type(st.st_mode), st.st_size, stat.S_IMODE(st.st_mode))


def _deleted_below(view: View, top: str, skip: set[str], survey: Survey) -> None:
    """Everything of C at ``top`` and below that the view shows (but for the names of
    ``skip`` directly below ``top``, which V holds itself): deleted in V."""
    pending: list[tuple[str, os.stat_result | None]] = [(top, None)]
    while pending:
        rel, st = pending.pop()
        if st is None:  # the top itself is not one of them
            children = view.lower.scan(rel)
        else:
            survey.changes[rel] = _change(rel, Kind.DELETED, st)
            children = view.lower.scan(rel) if stat.S_ISDIR(st.st_mode) else []
        for name, child_st in children:
            child = join(rel, name)
            if st is None and name in skip:
                continue
            if view.visible(child, stat.S_ISDIR(child_st.st_mode)):
                pending.append((child, child_st))


def survey(view: View) -> Survey:
    """What differs between the view and its codebase."""
    found = Survey()
    pending = [""]
    while pending:  # the upper tree, against C
        current = pending.pop()
        names = []
        for name, v in view.upper.scan(current):
            rel = join(current, name)
            names.append(name)
            is_dir = stat.S_ISDIR(v.st_mode)
            if stat.S_ISREG(v.st_mode):
                found.names[v.st_ino] += 1
            if not view.visible(rel, is_dir):
                continue
            c = view.lower.try_lstat(rel)
            kind = _compare(view, rel, v, c)
            if kind is None:
                if not is_dir:
                    found.same.append(rel)
            else:
                found.changes[rel] = _change(rel, kind, v)
            if is_dir:
                found.view_dirs.add(rel)
                pending.append(rel)
            elif c is not None and stat.S_ISDIR(c.st_mode):
                _deleted_below(view, rel, set(), found)  # a file where C has a directory
        if current and view.lower_hidden(current):
            # A directory the view deleted and made again: C's entries it lacks are deleted.
            c_dir = view.lower.try_lstat(current)
            if c_dir is not None and stat.S_ISDIR(c_dir.st_mode):
                _deleted_below(view, current, set(names), found)
    for rel in sorted(view.deleted.paths):  # deletions the upper tree does not stand in for
        if view.upper.try_lstat(rel) is not None or rel in found.changes:
            continue
        if _covered(view, rel):
            continue  # an ancestor's deletion lists it
        c = view.lower.try_lstat(rel)
        if c is not None and view.visible(rel, stat.S_ISDIR(c.st_mode)):
            found.changes[rel] = _change(rel, Kind.DELETED, c)
            if stat.S_ISDIR(c.st_mode):
                _deleted_below(view, rel, set(), found)
    return found


def _covered(view: View, rel: str) -> bool:
    """An ancestor of ``rel`` is deleted in V and not made again (its walk lists ``rel``)."""
    parent = rel.rpartition("/")[0]
    while parent:
        if parent in view.deleted.paths and view.upper.try_lstat(parent) is None:
            return True
        parent = parent.rpartition("/")[0]
    return False


def under(rel: str, tops: Iterable[str]) -> bool:
    """Whether ``rel`` is one of ``tops`` or below one ("" is the root: everything)."""
    return any(not top or rel == top or rel.startswith(top + "/") for top in tops)


class Selection:
    """The paths at or below one of ``paths`` (None, or "" among them: every path), each
    told in time logarithmic in their number: a request names up to thousands of paths, and
    a view may hold tens of thousands of changes (testing each change against each path
    held the view, and every view's thread, for seconds)."""

    def __init__(self, paths: Iterable[str] | None) -> None:
        chosen = None if paths is None else set(paths)
        self.everything = chosen is None or "" in chosen
        # Tops only (none below another), as components: the greatest one not after a path
        # is the only one that may hold it.
        self._tops = [] if chosen is None else sorted(tuple(p.split("/")) for p in tops(chosen))

    def top_of(self, rel: str) -> str | None:
        """The selected path ``rel`` is at or below (None: it is at or below none)."""
        if self.everything:
            return ""
        parts = tuple(rel.split("/"))
        at = bisect.bisect_right(self._tops, parts)
        if at and parts[: len(self._tops[at - 1])] == self._tops[at - 1]:
            return "/".join(self._tops[at - 1])
        return None

    def __contains__(self, rel: str) -> bool:
        return self.top_of(rel) is not None

    def paths(self) -> list[str]:
        """The tops of the selection ("" for every path)."""
        return [""] if self.everything else ["/".join(top) for top in self._tops]


def listed(found: Survey, paths: tuple[str, ...] | None) -> list[Change]:
    """The changes at or below ``paths`` (None: all), by path."""
    selection = Selection(paths)
    return [found.changes[rel] for rel in sorted(found.changes) if rel in selection]


def _ancestors(rel: str) -> Iterator[str]:
    parent = rel.rpartition("/")[0]
    while parent:
        yield parent
        parent = parent.rpartition("/")[0]


def _commit_selection(found: Survey, paths: tuple[str, ...] | None) -> list[Change]:
    selected = {change.path: change for change in listed(found, paths)}
    for rel in list(selected):  # room for them: directories of V that C lacks as such
        for parent in _ancestors(rel):
            change = found.changes.get(parent)
            if (
                change is not None
                and parent in found.view_dirs
                and change.kind
                in (
                    Kind.ADDED,
                    Kind.TYPE_CHANGED,
                )
            ):
                selected[parent] = change
    return list(selected.values())


# -- commit -----------------------------------------------------------------------------------


@dataclass
class Applied:
    applied: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # path, why
    changed: list[str] = field(default_factory=list)  # paths of C changed (to invalidate)
    bytes_delta: int = 0
    entries_delta: int = 0
    written: int = 0
    copies: dict[tuple[int, int], str] = field(default_factory=dict)  # a file's copy: where


def _conflict(view: View, change: Change, found: Survey) -> str | None:
    """Why applying ``change`` would overwrite what the codebase got since the view first
    changed its path (None: it would not)."""
    now = signature(view.lower.try_lstat(change.path))
    base = view.bases.get(change.path) if view.bases is not None else ABSENT
    if now == base or (now[0] == base[0] == stat.S_IFDIR and now[1] == base[1]):
        return None  # (a directory is the same one: what it holds is checked entry by entry)
    if change.kind is Kind.DELETED and now == ABSENT:
        return None  # gone from the codebase too
    directory = change.path in found.view_dirs and change.kind is not Kind.TYPE_CHANGED
    if directory and now[0] in (0, stat.S_IFDIR):
        return None  # a directory: made in both, or its mode: merged
    if now == ABSENT:
        return "the codebase no longer has it"
    if base == ABSENT:
        return "the codebase has it now (made since the sandbox made its own)"
    return "the codebase changed it since the sandbox first changed it"


def _size(st: os.stat_result | None) -> int:
    return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0


def _depth(rel: str) -> int:
    return rel.count("/")


def _remove_from_codebase(view: View, change: Change, found: Survey, result: Applied) -> None:
    """Phase one of a commit: what C holds at the path goes (a deletion, or a type V
    changed; a file over a file is left to the rename, which replaces it at once)."""
    st = view.lower.try_lstat(change.path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        view.lower.rmdir(change.path)  # (what it held went first: deeper changes come first)
    elif change.kind is Kind.TYPE_CHANGED and change.path not in found.view_dirs:
        return
    else:
        view.lower.unlink(change.path)
    result.bytes_delta -= _size(st)
    result.entries_delta -= 1
    result.changed.append(change.path)


def _place(view: View, change: Change, found: Survey, result: Applied) -> None:
    """Phase two: V's entry goes into C (its parent is there: shallower changes come first)."""
    rel = change.path
    v = view.upper.lstat(rel)
    c = view.lower.try_lstat(rel)
    if stat.S_ISDIR(v.st_mode):
        mode = stat.S_IMODE(v.st_mode)
        if c is not None and not stat.S_ISDIR(c.st_mode):  # (overwritten)
            view.lower.unlink(rel)
            result.bytes_delta -= _size(c)
            c = None
        if c is None:
            view.lower.mkdir(rel, mode)
            result.entries_delta += 1
        elif stat.S_IMODE(c.st_mode) != mode:
            view.lower.chmod(rel, mode)
        result.changed.append(rel)
        return
    if c is not None and stat.S_ISDIR(c.st_mode):  # (overwritten: V's file over C's directory)
        view.lower.rmdir(rel)
        result.entries_delta -= 1
        c = None
    written = _size(v)
    if stat.S_ISREG(v.st_mode) and found.linked_by_sandbox(v):
        # Its other names stay in the delta, sharing its content: a copy goes in (made out
        # of every view's sight, then renamed: never a partial file in the codebase), which
        # its other names committed with it share. (A file linked only into checkpoints
        # moves in: the codebase never changes in place.)
        first = result.copies.get((v.st_dev, v.st_ino))
        try:
            if first is not None and link_into(view.lower, first, view.orphans, _COPY):
                written = 0
            else:
                copy_file(view.upper, rel, view.orphans, _COPY)
            view.orphans.rename(_COPY, rel, view.lower)
        except OSError:
            with contextlib.suppress(OSError):
                view.orphans.unlink(_COPY)
            raise
        result.copies.setdefault((v.st_dev, v.st_ino), rel)
    else:
        view.upper.rename(rel, rel, view.lower)
    result.bytes_delta += _size(v) - _size(c)
    result.entries_delta += 1 if c is None else 0
    result.written += written
    result.changed.append(rel)


def apply(view: View, paths: tuple[str, ...] | None, *, overwrite: bool) -> Applied:
    """Apply the changes at ``paths`` (None: all) to the codebase; a view not under review
    (``view.bases`` None: ``commit="auto"``) is never checked for conflicts."""
    found = survey(view)
    result = Applied()
    check = view.bases is not None and not overwrite
    ready: list[Change] = []
    for change in _commit_selection(found, paths):
        why = _conflict(view, change, found) if check else None
        if why is None:
            ready.append(change)
        else:
            result.conflicts.append((change.path, why))
    failed: set[str] = set()
    done: set[str] = set()
    for change in sorted(ready, key=lambda c: (-_depth(c.path), c.path)):
        if change.kind in (Kind.DELETED, Kind.TYPE_CHANGED):
            try:
                _remove_from_codebase(view, change, found, result)
            except OSError as exc:
                failed.add(change.path)
                result.conflicts.append((change.path, _not_removed(change.path, exc, result)))
                continue
            if change.kind is Kind.DELETED:
                done.add(change.path)
    for change in sorted(ready, key=lambda c: (_depth(c.path), c.path)):
        if not change.in_view or change.path in failed:
            continue
        if any(parent in failed for parent in _ancestors(change.path)):
            failed.add(change.path)
            result.conflicts.append((change.path, "its directory could not be committed"))
            continue
        try:
            _place(view, change, found, result)
        except OSError as exc:
            failed.add(change.path)
            result.conflicts.append((change.path, _cannot("put it in", exc)))
            continue
        done.add(change.path)
    result.applied = sorted(done)
    selection = Selection(paths)
    same = [rel for rel in found.same if rel in selection]
    for rel in same:  # copies equal to the codebase's: nothing to keep
        with contextlib.suppress(OSError):
            if not found.linked_by_sandbox(view.upper.lstat(rel)):
                view.upper.unlink(rel)
    _settle(view, found, done, keep_bases=lambda rel: rel not in done)
    if view.bases is not None:
        # Committed but still in the delta (a directory, a file of several names): the
        # view's next change there is against what it committed, which is its base now.
        for rel in sorted(done):
            if view.upper.try_lstat(rel) is not None:
                view.bases.note(rel, view.lower.try_lstat(rel))
    view.usage.add(result.bytes_delta, result.entries_delta)
    result.conflicts.sort()
    return result


def _not_removed(rel: str, exc: OSError, result: Applied) -> str:
    if exc.errno != errno.ENOTEMPTY:
        return _cannot("remove it from", exc)
    if any(under(path, (rel,)) for path, _ in result.conflicts):
        return "entries below it were not committed"
    return "the codebase holds entries below it that the sandbox cannot see"


def _cannot(what: str, exc: OSError) -> str:
    return f"could not {what} the codebase: {exc.strerror or exc}"


# -- discard ----------------------------------------------------------------------------------


def discard(view: View, paths: tuple[str, ...] | None) -> list[str]:
    """Make the view equal to its codebase at ``paths`` (None: everywhere); the changes
    discarded, and with them every path whose content the view now shows otherwise."""
    found = survey(view)
    selection = Selection(paths)
    taken = {rel for rel in found.changes if rel in selection}
    hit = {selection.top_of(rel) or "" for rel in taken}
    for top in hit:  # what must come back with C's entries there: its directories on the way
        for parent in _ancestors(top):
            change = found.changes.get(parent)
            if change is not None and parent not in found.view_dirs:  # (deleted, or a file)
                taken.add(parent)
    for top in selection.paths():
        _remove_upper(view, top)
    for rel in taken:
        if view.upper.try_lstat(rel) is not None and rel not in found.view_dirs:
            view.upper.unlink(rel)  # a file of V where C has a directory on the way
    _settle(view, found, taken, keep_bases=lambda rel: rel not in selection and rel not in taken)
    return sorted(taken)


def _remove_upper(view: View, top: str) -> None:
    """Remove the upper tree's ``top`` and everything below it (iteratively)."""
    if top and view.upper.try_lstat(top) is None:
        return
    stack: list[tuple[str, bool]] = [(top, False)]
    while stack:
        rel, expanded = stack.pop()
        st = view.upper.try_lstat(rel)
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            view.upper.unlink(rel)
        elif expanded:
            if rel:
                view.upper.rmdir(rel)
        else:
            stack.append((rel, True))
            stack.extend((join(rel, name), False) for name in view.upper.listdir(rel))


# -- what the delta keeps ---------------------------------------------------------------------


def tops(paths: Iterable[str]) -> set[str]:
    """The paths of ``paths`` none of whose ancestors is among them."""
    kept: set[str] = set()
    for rel in sorted(paths, key=lambda p: (_depth(p), p)):
        if not any(parent in kept for parent in _ancestors(rel)):
            kept.add(rel)
    return kept


def _settle(
    view: View, found: Survey, taken: set[str], *, keep_bases: Callable[[str], bool]
) -> None:
    """After a commit or a discard: the deletions become the tops of what V still lacks of
    C (or holds as another type), empty upper directories that stand for nothing go, the
    bases of what is settled are forgotten, and the delta is counted again."""
    lacking = {
        rel
        for rel, change in found.changes.items()
        if change.kind in (Kind.DELETED, Kind.TYPE_CHANGED) and rel not in taken
    }
    records = tops(lacking)
    if records != view.deleted.paths:
        view.deleted.replace(records)
    _prune_upper_dirs(view)
    if view.bases is not None:
        view.bases.keep_only([rel for rel in view.bases.paths if keep_bases(rel)])
    view.recount()


def _prune_upper_dirs(view: View) -> None:
    """Remove the upper tree's empty directories that V would show all the same from C."""
    stack: list[tuple[str, bool]] = [("", False)]
    while stack:
        rel, expanded = stack.pop()
        if not expanded:
            stack.append((rel, True))
            stack.extend(
                (join(rel, name), False)
                for name, st in view.upper.scan(rel)
                if stat.S_ISDIR(st.st_mode)
            )
            continue
        if not rel or view.upper.listdir(rel) or view.lower_hidden(rel):
            continue
        c = view.lower.try_lstat(rel)
        v = view.upper.lstat(rel)
        if c is not None and stat.S_ISDIR(c.st_mode) and c.st_mode == v.st_mode:
            view.upper.rmdir(rel)
