"""One sandbox's view of its codebase: the codebase (lower), the sandbox's own changes
(upper, copy-on-write), deletions kept out of band, and the policy that says what it may see.

Resolution of a path: the upper tree first; else the lower tree, unless the path or one of its
ancestors was deleted in this view. Deletions are a set of paths in memory, appended to a log
beside the upper tree for recovery (never files an agent could create). All host access goes
through :class:`HostTree`, which follows no symlink. Nothing here recurses over a depth the
sandbox controls, and no path longer than :data:`MAX_PATH` is ever made.

A view is served by one thread at a time (its own), so it needs no lock of its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..policy import MatchState, Policy
from ..types import Permission
from ._appendlog import AppendLog
from ._bases import Bases
from ._events import EventRing
from ._host import HostTree, copy_file, dir_entries, split
from ._journal import Journal
from ._shared import Shared
from ._usage import CodebaseUsage
from .control import Limits
from .nodes import BUDGET, Nodes

UPPER, LOWER = "upper", "lower"
WORKSPACE = "/workspace"
# The longest path (relative to the view) that may be made: as /workspace/PATH it must fit
# in PATH_MAX, and every host operation addresses it as one path beneath a tree's root.
MAX_PATH = 4096 - 1 - len(WORKSPACE) - 1
NO_LIMITS = Limits()
_UNSHARE = "unshare"  # in the orphans directory (whose own names are numbers)
_LOWER_PHASE = 1 << 63  # listing cookies: the upper directory's, then this bit and the lower's


def fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass(frozen=True, slots=True)
class Entry:
    layer: str
    st: os.stat_result

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


def ancestors_and_self(rel: str) -> Iterable[str]:
    """``a``, ``a/b``, ``a/b/c`` for ``a/b/c``."""
    end = rel.find("/")
    while end != -1:
        yield rel[:end]
        end = rel.find("/", end + 1)
    if rel:
        yield rel


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class Deletions:
    """The paths this view deleted from its codebase, with a log to recover them from."""

    _LEN = struct.Struct("<I")

    def __init__(self, path: Path) -> None:
        self._log = AppendLog(path)
        self.paths: set[str] = set(self._decode(self._log.read()))

    def _decode(self, data: bytes) -> Iterator[str]:
        at = 0
        while at + self._LEN.size <= len(data):
            (length,) = self._LEN.unpack_from(data, at)
            at += self._LEN.size
            if at + length > len(data):
                return
            yield os.fsdecode(data[at : at + length])
            at += length

    def _record(self, rel: str) -> bytes:
        raw = os.fsencode(rel)
        return self._LEN.pack(len(raw)) + raw

    def __contains__(self, rel: str) -> bool:
        return rel in self.paths

    def __bool__(self) -> bool:
        return bool(self.paths)

    def ensure(self, *, removing: bool = False) -> None:
        """Room for one request's deletions (ENOSPC before anything changes, when none)."""
        self._log.ensure(removing=removing)

    def add(self, rel: str) -> None:
        if rel not in self.paths:
            self._log.append(self._record(rel))  # appended: rm -rf stays linear
            self.paths.add(rel)

    def replace(self, paths: set[str]) -> None:
        """Keep only ``paths`` (after a commit): the log is rewritten whole, then the set
        changes (so that it never holds less than the log on disk says)."""
        self._log.replace(b"".join(self._record(rel) for rel in sorted(paths)))
        self.paths = set(paths)

    def close(self) -> None:
        self._log.close()


class View:
    """The codebase as one sandbox sees it."""

    def __init__(
        self,
        view_id: str,
        *,
        lower: Path,
        delta: Path,
        policy: Policy,
        uid: int,
        gid: int,
        limits: Limits = NO_LIMITS,
        usage: CodebaseUsage | None = None,
        review: bool = False,
    ) -> None:
        self.id = view_id
        missing = [delta, *(d for d in delta.parents if not d.exists())]
        for directory in (*reversed(missing), delta / "upper", delta / "orphans"):
            directory.mkdir(mode=0o700, exist_ok=True)  # (each explicitly: no umask here)
        self.lower = HostTree(lower)
        self.upper = HostTree(delta / "upper")
        self.orphans = HostTree(delta / "orphans")
        self.deleted = Deletions(delta / "deleted")
        # Under review (``commit="manual"``), what the codebase held where the view changed
        # it, for a commit to tell conflicts (``_bases.py``); None: last committer wins.
        self.bases = Bases(delta / "bases") if review else None
        # Under review, the upper files linked into a checkpoint or a fork (``_shared.py``).
        self.shared = Shared(delta / "shared") if review else None
        self.events = EventRing()  # (records nothing until someone watches)
        self.nodes = Nodes(policy, Journal(delta / "nodes"), limits.node_bytes or BUDGET)
        self.policy = policy
        self.uid, self.gid = uid, gid
        self.limits = limits
        self.usage = usage or CodebaseUsage(lower)
        # Written into the delta since the last commit, against the limits; ``over_limit``
        # records a change refused for them, for the command's result.
        self.delta_bytes = 0
        self.delta_entries = 0
        # Held by removed files that are still open (never committed): counted against the
        # delta limit once they outlive a commit, or a sandbox could keep any amount of disk
        # by holding files open across commands. (Most go at once: the kernel lets go of a
        # removed file as soon as nothing holds it.)
        self.orphan_bytes = 0
        self.carried_orphan_bytes = 0
        self.over_limit = False
        # Nothing written since the last commit: lookups need not ask the upper tree.
        self.upper_empty = not self.upper.listdir("")
        if not self.upper_empty:  # (taken over, or seeded by a fork)
            self.recount()

    def close(self) -> None:
        for tree in (self.lower, self.upper, self.orphans):
            tree.close()
        self.deleted.close()
        for log in (self.bases, self.shared):
            if log is not None:
                log.close()
        self.events.close()
        self.nodes.journal.close()
        self.nodes.clear()

    # -- policy -------------------------------------------------------------------------------

    def state(self, rel: str) -> MatchState:
        return self.policy.state(rel)

    def level(self, rel: str) -> Permission:
        return self.policy.level(rel)

    @staticmethod
    def visible_state(state: MatchState, level: Permission, is_dir: bool) -> bool:
        return level is not Permission.NONE or (is_dir and state.may_grant_below())

    def visible(self, rel: str, is_dir: bool) -> bool:
        if not rel:
            return True
        state = self.policy.state(rel)
        return self.visible_state(state, self.policy.level_of(state), is_dir)

    # -- resolution ---------------------------------------------------------------------------

    def lower_hidden(self, rel: str) -> bool:
        """Whether ``rel`` or one of its ancestors was deleted in this view."""
        deleted = self.deleted.paths
        if not deleted:
            return False
        if len(deleted) < 8:  # a few deletions: test each rather than every ancestor
            return any(rel == d or rel.startswith(d + "/") for d in deleted)
        return any(prefix in deleted for prefix in ancestors_and_self(rel))

    def locate(self, rel: str) -> Entry | None:
        if not self.upper_empty:
            st = self.upper.try_lstat(rel)
            if st is not None:
                return Entry(UPPER, st)
        if self.lower_hidden(rel):
            return None
        st = self.lower.try_lstat(rel)
        return None if st is None else Entry(LOWER, st)

    def open_file(self, rel: str, flags: int) -> int:
        """An fd on the regular file ``rel`` of this view (the upper tree's, else the lower's);
        never blocking on the way: a FIFO put there must not hold this view's thread."""
        flags |= os.O_NONBLOCK | os.O_NOFOLLOW
        fd = -1
        if not self.upper_empty:
            with contextlib.suppress(FileNotFoundError):
                fd = self.upper.open(rel, flags)
        if fd < 0:
            if self.lower_hidden(rel):
                raise fail(errno.ENOENT)
            fd = self.lower.open(rel, flags)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise fail(errno.EINVAL)
        return fd

    def tree(self, layer: str) -> HostTree:
        return self.upper if layer == UPPER else self.lower

    def _lower_directory(self, rel: str) -> int | None:
        """An fd on the lower tree's directory ``rel``; None when it has none there."""
        try:
            return self.lower.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None
            raise

    def listing(self, rel: str, cookie: int) -> Iterator[tuple[str, Entry | None, int]]:
        """The directory's entries in this view (before any policy filtering) from
        ``cookie`` (0: the start), each with the cookie to go on after it. The upper
        directory's entries come first, then the lower's that it does not override; ``.``
        and ``..`` (with no entry) come from the first of the two."""
        upper_fd = -1
        if not self.upper_empty:
            with contextlib.suppress(OSError):
                upper_fd = self.upper.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if upper_fd >= 0 and cookie < _LOWER_PHASE:
                for name, _, after in dir_entries(upper_fd, cookie):
                    if name in (".", ".."):
                        yield name, None, after
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(name, dir_fd=upper_fd, follow_symlinks=False)
                        yield name, Entry(UPPER, st), after
                cookie = _LOWER_PHASE
            if rel and self.lower_hidden(rel):
                return
            lower_fd = self._lower_directory(rel)
            if lower_fd is None:
                return
            try:
                deleted = self.deleted.paths
                for name, _, after in dir_entries(lower_fd, cookie & ~_LOWER_PHASE):
                    if name in (".", ".."):
                        if upper_fd < 0:
                            yield name, None, after | _LOWER_PHASE
                        continue
                    if deleted and join(rel, name) in deleted:
                        continue
                    if upper_fd >= 0 and _exists_at(upper_fd, name):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(name, dir_fd=lower_fd, follow_symlinks=False)
                        yield name, Entry(LOWER, st), after | _LOWER_PHASE
            finally:
                os.close(lower_fd)
        finally:
            if upper_fd >= 0:
                os.close(upper_fd)

    def visible_children(self, rel: str) -> Iterator[tuple[str, Entry]]:
        """The entries of directory ``rel`` that this view shows."""
        state = self.policy.state(rel)
        for name, entry, _ in self.listing(rel, 0):
            if entry is None:
                continue
            child = self.policy.step(state, name)
            if self.visible_state(child, self.policy.level_of(child), entry.is_dir):
                yield join(rel, name), entry

    def has_visible_children(self, rel: str) -> bool:
        return next(self.visible_children(rel), None) is not None

    def readlink(self, rel: str, entry: Entry) -> str:
        return self.tree(entry.layer).readlink(rel)

    # -- limits -------------------------------------------------------------------------------

    def _refuse(self) -> OSError:
        self.over_limit = True
        return fail(errno.ENOSPC)

    def charge(self, size: int) -> None:
        """Count ``size`` more bytes into the delta; ENOSPC beyond the sandbox's limit, or
        beyond its codebase's cap (what the codebase holds and this delta would add)."""
        if size <= 0:
            return
        most = self.limits.delta_bytes
        if most and self.delta_bytes + self.carried_orphan_bytes + size > most:
            raise self._refuse()
        cap = self.limits.codebase_bytes
        if cap and self.usage.known and self.usage.bytes + self.delta_bytes + size > cap:
            raise self._refuse()
        self.delta_bytes += size

    def count_entry(self) -> None:
        """One more entry in the delta (a new name, or one copied up); ENOSPC beyond the
        limit: an entry costs the host an inode whatever its size."""
        most = self.limits.delta_entries
        if most and self.delta_entries + 1 > most:
            raise self._refuse()
        cap = self.limits.codebase_entries
        if cap and self.usage.known and self.usage.entries + self.delta_entries + 1 > cap:
            raise self._refuse()
        self.delta_entries += 1

    def check_room(self, size: int, entries: int) -> None:
        """ENOSPC unless a delta of ``size`` bytes and ``entries`` entries, put in place at
        once (a restore), fits the sandbox's limits and its codebase's cap."""
        limits, usage = self.limits, self.usage
        if (limits.delta_bytes and size + self.carried_orphan_bytes > limits.delta_bytes) or (
            limits.delta_entries and entries > limits.delta_entries
        ):
            raise fail(errno.ENOSPC)
        if usage.known and (
            (limits.codebase_bytes and usage.bytes + size > limits.codebase_bytes)
            or (limits.codebase_entries and usage.entries + entries > limits.codebase_entries)
        ):
            raise fail(errno.ENOSPC)

    def count_orphans(self) -> None:
        """Count what the orphans hold (a view taken over from a process that died)."""
        with contextlib.suppress(FileNotFoundError):
            self.orphans.unlink(_UNSHARE)  # (a copy the dead process did not finish)
        for _, st in self.orphans.scan(""):
            self.orphan_bytes += st.st_size
        self.carried_orphan_bytes = self.orphan_bytes

    def recount(self) -> None:
        """Count what the upper tree holds against the limits (after it changed wholesale)."""
        self.delta_bytes = self.delta_entries = 0
        sized: set[int] = set()  # (a file of several names: its bytes once)
        pending = [""]
        while pending:
            current = pending.pop()
            for name, st in self.upper.scan(current):
                self.delta_entries += 1
                if stat.S_ISDIR(st.st_mode):
                    pending.append(join(current, name))
                elif stat.S_ISREG(st.st_mode) and (st.st_nlink < 2 or st.st_ino not in sized):
                    self.delta_bytes += st.st_size
                    sized.add(st.st_ino)
        self.upper_empty = self.delta_entries == 0

    @staticmethod
    def check_length(rel: str) -> None:
        if len(os.fsencode(rel)) > MAX_PATH:
            raise fail(errno.ENAMETOOLONG)

    # -- copy-on-write ------------------------------------------------------------------------

    def _upper_parents(self, rel: str) -> None:
        """Make ``rel``'s parent directories exist in the upper tree (modes from this view).
        Usually the parent is there already: one look. Else from the deepest one there."""
        missing: list[str] = []
        parent = split(rel)[0]
        while parent:
            st = self.upper.try_lstat(parent) if not self.upper_empty else None
            if st is not None:
                if not stat.S_ISDIR(st.st_mode):
                    raise fail(errno.ENOTDIR)
                break
            missing.append(parent)
            parent = split(parent)[0]
        for directory in reversed(missing):
            entry = self.locate(directory)
            if entry is None:
                raise fail(errno.ENOENT)
            if self.bases is not None and entry.layer == LOWER:
                self.bases.note(directory, entry.st)
            self.count_entry()
            self.upper.mkdir(directory, stat.S_IMODE(entry.st.st_mode))
            self.upper_empty = False
        self.upper_empty = False

    def copy_up(self, rel: str) -> Entry:
        """Bring ``rel`` into the upper tree (a directory without its content)."""
        entry = self.locate(rel)
        if entry is None:
            raise fail(errno.ENOENT)
        if entry.layer == UPPER or not rel:
            if self.shared is not None and self.shared.needs_copy(entry.st):
                return self._unshare(rel)
            return entry
        mode = entry.st.st_mode
        if self.bases is not None:
            self.bases.note(rel, entry.st)
        if stat.S_ISREG(mode):
            self.charge(entry.st.st_size)
        elif not (stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            raise OSError(errno.EOPNOTSUPP, "special files are not copied up", rel)
        self._upper_parents(rel)
        self.count_entry()
        if stat.S_ISDIR(mode):
            self.upper.mkdir(rel, stat.S_IMODE(mode))
        elif stat.S_ISLNK(mode):
            self.upper.symlink(self.lower.readlink(rel), rel)
        else:
            copy_file(self.lower, rel, self.upper, rel)
        return Entry(UPPER, self.upper.lstat(rel))

    def _unshare(self, rel: str) -> Entry:
        """Replace the upper file ``rel``, linked into a checkpoint or a fork, by a copy of
        its own (made beside the delta, out of sight, then renamed over it). (A file the
        sandbox gave several names is never linked into one: ``checkpoints.copy_tree``.)"""
        copy_file(self.upper, rel, self.orphans, _UNSHARE)
        try:
            self.orphans.rename(_UNSHARE, rel, self.upper)
        except OSError:
            with contextlib.suppress(OSError):
                self.orphans.unlink(_UNSHARE)
            raise
        return Entry(UPPER, self.upper.lstat(rel))

    def copy_up_tree(self, rel: str) -> None:
        """Copy up ``rel`` and every entry below it that this view can see (iteratively)."""
        pending = [rel]
        while pending:
            current = pending.pop()
            if self.copy_up(current).is_dir:
                pending.extend(child for child, _ in self.visible_children(current))

    def prepare_new(self, rel: str) -> None:
        """Make room for a new entry at ``rel`` in the upper tree."""
        self.check_length(rel)
        self._upper_parents(rel)
        self.count_entry()

    def forget_lower(self, rel: str, *, seen: bool = True) -> None:
        """``rel`` is gone from this view (the lower tree's entry, if any, is hidden);
        ``seen``: the view showed that entry (it is the base of the change), else the view
        showed its own entry there, and the codebase's was never seen."""
        self._hide_lower(rel, seen=seen)

    def created(self, rel: str) -> None:
        """A new entry now stands at ``rel`` in the upper tree."""
        # Hide whatever the lower tree holds there: a recreated directory starts empty. (The
        # view showed nothing there: an entry the codebase has is one it never saw.)
        self._hide_lower(rel, seen=False)

    def _hide_lower(self, rel: str, *, seen: bool) -> None:
        if self.lower_hidden(rel):
            return
        st = self.lower.try_lstat(rel)
        if st is not None:
            # A base is the codebase's entry only when the view showed it: hiding one that
            # came after the view made its own name (another sandbox's commit) leaves the
            # base absent, and a commit over it a conflict.
            if self.bases is not None and seen:
                self.bases.note(rel, st)
            self.deleted.add(rel)

    def keep_orphan(self, rel: str, entry: Entry, ident: int) -> str:
        """Keep the content of the file at ``rel`` (about to go) for a process that may
        hold it open; the orphan's name, or "" when it cannot be kept."""
        name = str(ident)
        try:
            if entry.layer == UPPER:
                self.upper.rename(rel, name, self.orphans)
            else:  # the codebase's inode: linked, and copied before any write through it
                with self.lower.parent(rel) as (fd, leaf):
                    os.link(leaf, name, src_dir_fd=fd, dst_dir_fd=self.orphans.fd,
                            follow_symlinks=False)  # fmt: skip
        except OSError:
            return ""
        self.orphan_bytes += entry.st.st_size
        return name

    def drop_orphan(self, name: str) -> None:
        with contextlib.suppress(OSError):
            self.orphan_bytes -= self.orphans.lstat(name).st_size
            self.orphans.unlink(name)
        self.orphan_bytes = max(0, self.orphan_bytes)
        self.carried_orphan_bytes = min(self.carried_orphan_bytes, self.orphan_bytes)

    def remove(self, rel: str, entry: Entry) -> None:
        """Remove the entry (a file kept as an orphan has left the upper tree already)."""
        if entry.layer == UPPER:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_dir:
                    self.upper.rmdir(rel)
                else:
                    self.upper.unlink(rel)
        self.forget_lower(rel, seen=entry.layer == LOWER)

    def rename(self, old: str, new: str) -> None:
        """Rename within the view (both paths already checked by the caller)."""
        self.copy_up_tree(old)
        self._upper_parents(new)
        target = self.locate(new)
        if target is not None and target.layer == LOWER:
            self.forget_lower(new)
        self.upper.rename(old, new)
        self.created(new)
        self.forget_lower(old, seen=False)  # (copied up: its base, if any, is noted)

    def longest_below(self, rel: str) -> int:
        """The length of the longest path this view shows at ``rel`` or below it: what a
        rename of ``rel`` moves (hidden entries stay where they are, and must not be
        measured: a refusal would tell how long their names are)."""
        longest = len(os.fsencode(rel))
        pending = [rel]
        while pending:
            current = pending.pop()
            for child, entry in self.visible_children(current):
                longest = max(longest, len(os.fsencode(child)))
                if entry.is_dir:
                    pending.append(child)
        return longest


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


__all__ = ["LOWER", "MAX_PATH", "UPPER", "Entry", "View", "fail", "join"]
