"""One sandbox's view of its codebase: the codebase (lower), the sandbox's own changes
(upper, copy-on-write), deletions kept out of band, and the policy that says what it may see.

Resolution of a path: the upper tree first; else the lower tree, unless the path or one of its
ancestors was deleted in this view. Deletions are a set of paths in memory (saved beside the
upper tree for recovery), never files an agent could create. All host access goes through
:class:`HostTree`, which follows no symlink.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..policy import Policy
from ..types import Permission
from ._host import HostTree, copy_file, split

UPPER, LOWER = "upper", "lower"


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


class View:
    """The codebase as one sandbox sees it. Not thread-safe; the fs runs on one thread."""

    def __init__(
        self,
        view_id: str,
        *,
        lower: Path,
        upper: Path,
        policy: Policy,
        uid: int,
        gid: int,
        max_delta: int = 0,
    ) -> None:
        self.id = view_id
        upper.mkdir(parents=True, exist_ok=True)
        self.lower = HostTree(lower)
        self.upper = HostTree(upper)
        self.policy = policy
        self.uid, self.gid = uid, gid
        self._deleted_file = upper.parent / f"{upper.name}.deleted.json"
        self.deleted: set[str] = set()
        with contextlib.suppress(OSError, ValueError):
            self.deleted = set(json.loads(self._deleted_file.read_text()))
        self.writers: dict[int, int] = {}  # upper inode -> open write handles
        # Bytes written into the delta since the last commit, against ``max_delta`` (0: no
        # limit); ``over_limit`` records a write refused for it, for the command's result.
        self.max_delta = max_delta
        self.delta_bytes = 0
        self.over_limit = False
        # Nothing written since the last commit: lookups need not ask the upper tree.
        self.upper_empty = not self.upper.listdir("")

    def close(self) -> None:
        self.lower.close()
        self.upper.close()

    # -- policy -------------------------------------------------------------------------------

    def level(self, rel: str) -> Permission:
        return self.policy.level(rel)

    def passage(self, rel: str) -> bool:
        """A directory shown only because something below it is granted."""
        return self.policy.may_grant_below(rel)

    def visible(self, rel: str, is_dir: bool) -> bool:
        if not rel or self.policy.level(rel) is not Permission.NONE:
            return True
        return is_dir and self.policy.may_grant_below(rel)

    # -- resolution ---------------------------------------------------------------------------

    def lower_hidden(self, rel: str) -> bool:
        return any(prefix in self.deleted for prefix in ancestors_and_self(rel))

    def locate(self, rel: str) -> Entry | None:
        if not self.upper_empty:
            st = self.upper.try_lstat(rel)
            if st is not None:
                return Entry(UPPER, st)
        if self.deleted and self.lower_hidden(rel):
            return None
        st = self.lower.try_lstat(rel)
        return None if st is None else Entry(LOWER, st)

    def entries(self, rel: str) -> list[tuple[str, Entry]]:
        """The directory's entries in this view (before any policy filtering), by name."""
        found: dict[str, Entry] = {}
        if not self.upper_empty:
            found.update((name, Entry(UPPER, st)) for name, st in self.upper.scan(rel))
        if not rel or not self.lower_hidden(rel):
            for name, st in self.lower.scan(rel):
                if name not in found and join(rel, name) not in self.deleted:
                    found[name] = Entry(LOWER, st)
        return sorted(found.items())

    def tree(self, layer: str) -> HostTree:
        return self.upper if layer == UPPER else self.lower

    def readlink(self, rel: str, entry: Entry) -> str:
        return self.tree(entry.layer).readlink(rel)

    def open(self, rel: str, entry: Entry, flags: int) -> int:
        return self.tree(entry.layer).open(rel, flags)

    # -- copy-on-write ------------------------------------------------------------------------

    def save_deleted(self) -> None:
        tmp = self._deleted_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.deleted)))
        tmp.replace(self._deleted_file)

    def _upper_parents(self, rel: str) -> None:
        """Make ``rel``'s parent directories exist in the upper tree (modes from this view)."""
        self.upper_empty = False
        parent, _ = split(rel)

        def mode_of(path: str) -> int:
            entry = self.locate(path)
            return stat.S_IMODE(entry.st.st_mode) if entry else 0o755

        self.upper.makedirs(parent, mode_of)

    def charge(self, size: int) -> None:
        """Count ``size`` more bytes into the delta; ENOSPC beyond the sandbox's limit."""
        if size <= 0:
            return
        if self.max_delta and self.delta_bytes + size > self.max_delta:
            self.over_limit = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.delta_bytes += size

    def copy_up(self, rel: str) -> Entry:
        """Bring ``rel`` into the upper tree (a directory without its content)."""
        entry = self.locate(rel)
        if entry is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), rel)
        if entry.layer == UPPER or not rel:
            return entry
        if stat.S_ISREG(entry.st.st_mode):
            self.charge(entry.st.st_size)
        self._upper_parents(rel)
        mode = entry.st.st_mode
        if stat.S_ISDIR(mode):
            self.upper.mkdir(rel, stat.S_IMODE(mode))
        elif stat.S_ISLNK(mode):
            self.upper.symlink(self.lower.readlink(rel), rel)
        elif stat.S_ISREG(mode):
            copy_file(self.lower, rel, self.upper, rel)
        else:
            raise OSError(errno.EOPNOTSUPP, "special files are not copied up", rel)
        return Entry(UPPER, self.upper.lstat(rel))

    def copy_up_tree(self, rel: str) -> None:
        """Copy up ``rel`` and every entry below it that this view can see."""
        entry = self.copy_up(rel)
        if entry.is_dir:
            for name, child_entry in self.entries(rel):
                child = join(rel, name)
                if self.visible(child, child_entry.is_dir):
                    self.copy_up_tree(child)

    def prepare_new(self, rel: str) -> None:
        """Make room for a new entry at ``rel`` in the upper tree."""
        self._upper_parents(rel)

    def forget_lower(self, rel: str) -> None:
        """``rel`` is gone from this view (the lower tree's entry, if any, is hidden)."""
        if not self.lower_hidden(rel) and self.lower.try_lstat(rel) is not None:
            self.deleted.add(rel)
            self.save_deleted()

    def created(self, rel: str) -> None:
        """A new entry now stands at ``rel`` in the upper tree."""
        # Hide whatever the lower tree holds there: a recreated directory starts empty.
        if self.lower.try_lstat(rel) is not None and not self.lower_hidden(rel):
            self.deleted.add(rel)
            self.save_deleted()

    def remove(self, rel: str, entry: Entry) -> None:
        if entry.layer == UPPER:
            if entry.is_dir:
                self.upper.rmdir(rel)
            else:
                self.upper.unlink(rel)
        self.forget_lower(rel)

    def rename(self, old: str, new: str) -> None:
        """Rename within the view (both paths already checked by the caller)."""
        self.copy_up_tree(old)
        self._upper_parents(new)
        target = self.locate(new)
        if target is not None and target.layer == LOWER:
            self.forget_lower(new)
        self.upper.rename(old, new)
        self.created(new)
        self.forget_lower(old)
