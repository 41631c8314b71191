"""A view's layer copied aside and back: checkpoints, and the seed of a fork.

A layer is the upper tree, the deletions and (under review) the bases. :func:`capture`
copies them into a directory of their own; :func:`restore` makes a copy of one the view's
layer. Each costs what the layer holds (its entries), never what the codebase holds. A
manual view's files and symlinks are linked, not copied: creating a file costs a disk far
more than a new name, and the view copies a linked file before it changes it
(``_shared.py``), so a checkpoint never changes as the view goes on writing. Other views'
files are copied (names sharing one file share one copy).

What a copy takes of the disk (the inodes it makes, the blocks its copies allocate: a link
takes neither) is counted as it goes, against a budget the caller gives (``Budget``): a
sandbox's checkpoints together may take of the disk what its delta may (the server keeps
the count), or a sandbox could fill the disk every tenant shares with copies of copies.
Holes stay holes.

A restore builds the new upper tree beside the view's, then swaps the two by renames, so a
crash leaves one or the other, and only then replaces the deletions and the bases. Walks are
iterative.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ._bases import Bases
from ._host import HostTree, copy_file, remove_tree
from ._shared import Shared
from .view import Deletions, View, join

UPPER, DELETED, BASES, SHARED = "upper", "deleted", "bases", "shared"
_RESTORING, _REPLACED = "restoring", "replaced"


@dataclass
class Budget:
    """What a copy may take of the disk: inodes and bytes (None: no bound), and what it took."""

    most_entries: int | None = None
    most_bytes: int | None = None
    made: int = 0  # inodes made
    allocated: int = 0  # bytes of blocks allocated

    def spend(self, inodes: int, size: int) -> None:
        """Count an inode and ``size`` bytes about to be taken; ENOSPC past the bounds."""
        made, allocated = self.made + inodes, self.allocated + size
        if (self.most_entries is not None and made > self.most_entries) or (
            self.most_bytes is not None and allocated > self.most_bytes
        ):
            raise OSError(
                errno.ENOSPC,
                f"the copy would take more than {self.most_entries} inodes or "
                f"{self.most_bytes} bytes",
            )
        self.made, self.allocated = made, allocated


@dataclass
class Copied:
    entries: int = 0  # of the tree
    size: int = 0  # bytes of its files
    linked: list[int] = field(default_factory=list)  # inodes of the files linked


_BLOCK = 512  # (st_blocks' unit)
_DIRECTORY_BYTES = 4096  # what a directory of a few names takes


def copy_tree(
    src: HostTree, dst: HostTree, *, link: bool = False, budget: Budget | None = None
) -> Copied:
    """Copy everything of ``src`` into the empty ``dst`` (modes and times kept): directories
    made, files copied or, with ``link``, linked (a file with the most names its disk allows
    is copied), symlinks, FIFOs and sockets made anew; what that takes of the disk spent
    from ``budget`` before it is taken.

    Only a regular file is ever linked: the view copies a linked one before it changes it
    (``View.copy_up``), and has nothing to copy of any other entry (a linked FIFO would take
    the view's chmod into the checkpoint). A file with several names in ``src`` (links the
    sandbox made) is copied once, its names linked to the copy: linked into the view, its
    first change would copy it for one name only, and its names would stop sharing it."""
    budget = budget or Budget()
    copied = Copied()
    first_name: dict[tuple[int, int], str] = {}  # a file with several names: its first copy
    sized: set[tuple[int, int]] = set()
    names = _names_by_inode(src) if link else {}
    pending = [""]
    while pending:
        current = pending.pop()
        for name, st in src.scan(current):
            rel = join(current, name)
            copied.entries += 1
            if stat.S_ISDIR(st.st_mode):
                budget.spend(1, _DIRECTORY_BYTES)
                dst.mkdir(rel, stat.S_IMODE(st.st_mode))
                pending.append(rel)
                continue
            if not stat.S_ISREG(st.st_mode):
                budget.spend(1, 0)
                _make_like(src, rel, st, dst)
                continue
            key = (st.st_dev, st.st_ino)
            if st.st_nlink < 2 or key not in sized:  # (a file's bytes once, as a delta counts)
                copied.size += st.st_size
                sized.add(key)
            if link and names.get(key, 0) < 2 and _link(src, rel, dst):
                copied.linked.append(st.st_ino)
                continue
            first = first_name.get(key) if st.st_nlink > 1 else None
            if first is not None and _link(dst, first, dst, rel):
                continue
            budget.spend(1, st.st_blocks * _BLOCK)  # (holes stay holes: copy_file)
            copy_file(src, rel, dst, rel)
            if st.st_nlink > 1:
                first_name[key] = rel
    return copied


def _names_by_inode(tree: HostTree) -> dict[tuple[int, int], int]:
    """How many names each file with more than one link has in ``tree``."""
    counted: dict[tuple[int, int], int] = {}
    pending = [""]
    while pending:
        current = pending.pop()
        for name, st in tree.scan(current):
            if stat.S_ISDIR(st.st_mode):
                pending.append(join(current, name))
            elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                counted[key] = counted.get(key, 0) + 1
    return counted


def _link(src: HostTree, rel: str, dst: HostTree, dst_rel: str | None = None) -> bool:
    """A new name ``dst_rel`` (else ``rel``) in ``dst`` for the file ``rel`` of ``src``;
    False when it has the most names its disk allows (a sandbox may give one file that
    many: each of its names then gets a copy)."""
    target = rel if dst_rel is None else dst_rel
    with src.parent(rel) as (src_fd, src_name), dst.parent(target) as (dst_fd, dst_name):
        try:
            os.link(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd,
                    follow_symlinks=False)  # fmt: skip
        except OSError as exc:
            if exc.errno == errno.EMLINK:
                return False
            raise
    return True


def _make_like(src: HostTree, rel: str, st: os.stat_result, dst: HostTree) -> None:
    """A new symlink, FIFO or socket in ``dst`` like ``rel`` of ``src`` (times kept)."""
    if stat.S_ISLNK(st.st_mode):
        dst.symlink(src.readlink(rel), rel)
    elif stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        with dst.parent(rel) as (fd, name):
            os.mknod(name, stat.S_IFMT(st.st_mode) | stat.S_IMODE(st.st_mode), dir_fd=fd)
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=fd)  # (past the umask)
    else:
        return  # (no device is ever made in a view)
    dst.utime(rel, (st.st_atime_ns, st.st_mtime_ns))


def capture(view: View, target: Path, budget: Budget | None = None) -> Copied:
    """Copy the view's layer into ``target`` (a new directory, its parent there: what a
    capture cut short left there goes first), within ``budget`` (ENOSPC past it, and
    nothing left of the copy)."""
    remove_tree(target)
    target.mkdir(mode=0o700)
    try:
        copied = _capture_upper(view, target, budget)
    except BaseException:
        remove_tree(target)
        raise
    if view.shared is not None:
        view.shared.add(copied.linked)
        seeded = Shared(target / SHARED)  # (a fork's view shares them too)
        try:
            seeded.add(copied.linked)
        finally:
            seeded.close()
    deleted = Deletions(target / DELETED)
    try:
        deleted.replace(set(view.deleted.paths))
    finally:
        deleted.close()
    if view.bases is not None:
        bases = Bases(target / BASES)
        try:
            bases.replace(view.bases.paths)
        finally:
            bases.close()
    return copied


def _capture_upper(view: View, target: Path, budget: Budget | None) -> Copied:
    (target / UPPER).mkdir(mode=0o700)
    upper = HostTree(target / UPPER)
    try:
        # A manual view's files are linked (it copies a linked one before changing it);
        # another's copied (its commits would take a linked file for the sandbox's own link).
        return copy_tree(view.upper, upper, link=view.shared is not None, budget=budget)
    finally:
        upper.close()


def restore(view: View, source: Path, delta: Path) -> None:
    """Make the view's layer (in ``delta``) a copy of the one captured in ``source``;
    ENOSPC, the view left as it was, when that layer would not fit the view's limits: what
    a restore puts in the delta was charged once, when it was written, and a sandbox that
    could have it again for nothing would grow its codebase past its cap without end (a
    restore, a rename that costs nothing, a commit, and again)."""
    captured = Deletions(source / DELETED)  # (read first: a restore begun is seen through)
    try:
        deleted = set(captured.paths)
    finally:
        captured.close()
    based = None
    if view.bases is not None:
        bases = Bases(source / BASES)
        try:
            based = bases.paths
        finally:
            bases.close()
    building = delta / _RESTORING
    remove_tree(building)  # (what a restore cut short left)
    building.mkdir(mode=0o700)
    tree = HostTree(building)
    try:
        copied = _copy_from(source / UPPER, tree, link=view.shared is not None)
    finally:
        tree.close()
    try:
        view.check_room(copied.size, copied.entries)
    except OSError:
        remove_tree(building)
        raise
    if view.shared is not None:
        view.shared.add(copied.linked)
    replaced = delta / _REPLACED
    remove_tree(replaced)
    os.rename(delta / UPPER, replaced)
    os.rename(building, delta / UPPER)
    view.upper.close()
    view.upper = HostTree(delta / UPPER)
    remove_tree(replaced)
    view.deleted.replace(deleted)
    if view.bases is not None and based is not None:
        view.bases.replace(based)
    view.recount()


def _copy_from(root: Path, dst: HostTree, *, link: bool) -> Copied:
    src = HostTree(root)
    try:
        return copy_tree(src, dst, link=link)
    finally:
        src.close()
