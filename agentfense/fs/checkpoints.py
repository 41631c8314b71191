"""A view's layer copied aside and back: checkpoints, and the seed of a fork.

A layer is the upper tree, the deletions and (under review) the bases. :func:`capture`
copies them into a directory of their own; :func:`restore` makes a copy of one the view's
layer. Each costs what the layer holds (its entries), never what the codebase holds. A
manual view's files and symlinks are linked, not copied: creating a file costs a disk far
more than a new name, and the view copies a linked file before it changes it
(``_shared.py``), so a checkpoint never changes as the view goes on writing. Other views'
files are copied (names sharing one file share one copy).

A restore builds the new upper tree beside the view's, then swaps the two by renames, so a
crash leaves one or the other, and only then replaces the deletions and the bases. Walks are
iterative.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ._bases import Bases
from ._host import HostTree, copy_file, remove_tree
from ._shared import Shared
from .view import Deletions, View, join

UPPER, DELETED, BASES, SHARED = "upper", "deleted", "bases", "shared"
_RESTORING, _REPLACED = "restoring", "replaced"


def copy_tree(src: HostTree, dst: HostTree, *, link: bool = False) -> tuple[int, int, list[int]]:
    """Copy everything of ``src`` into the empty ``dst`` (modes and times kept): directories
    made, files copied or, with ``link``, linked (a file with the most names its disk allows
    is copied), symlinks, FIFOs and sockets made anew. How many entries, how many bytes of
    files, and the inodes of the files linked.

    Only a regular file is ever linked: the view copies a linked one before it changes it
    (``View.copy_up``), and has nothing to copy of any other entry (a linked FIFO would take
    the view's chmod into the checkpoint). A file with several names in ``src`` (links the
    sandbox made) is copied once, its names linked to the copy: linked into the view, its
    first change would copy it for one name only, and its names would stop sharing it."""
    entries = size = 0
    linked: list[int] = []
    first_name: dict[tuple[int, int], str] = {}  # a file with several names: its first copy
    names = _names_by_inode(src) if link else {}
    pending = [""]
    while pending:
        current = pending.pop()
        for name, st in src.scan(current):
            rel = join(current, name)
            entries += 1
            if stat.S_ISDIR(st.st_mode):
                dst.mkdir(rel, stat.S_IMODE(st.st_mode))
                pending.append(rel)
                continue
            if not stat.S_ISREG(st.st_mode):
                _make_like(src, rel, st, dst)
                continue
            size += st.st_size
            if link and names.get((st.st_dev, st.st_ino), 0) < 2 and _link(src, rel, dst):
                linked.append(st.st_ino)
                continue
            first = first_name.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
            if first is not None and _link(dst, first, dst, rel):
                continue
            copy_file(src, rel, dst, rel)
            if st.st_nlink > 1:
                first_name[(st.st_dev, st.st_ino)] = rel
    return entries, size, linked


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


def capture(view: View, target: Path) -> tuple[int, int]:
    """Copy the view's layer into ``target`` (a new directory; its parent exists)."""
    target.mkdir(mode=0o700)
    (target / UPPER).mkdir(mode=0o700)
    upper = HostTree(target / UPPER)
    try:
        # A manual view's files are linked (it copies a linked one before changing it);
        # another's copied (its commits would take a linked file for the sandbox's own link).
        link = view.shared is not None
        entries, size, linked = copy_tree(view.upper, upper, link=link)
    finally:
        upper.close()
    if view.shared is not None:
        view.shared.add(linked)
        seeded = Shared(target / SHARED)  # (a fork's view shares them too)
        try:
            seeded.add(linked)
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
    return entries, size


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
        entries, size, linked = _copy_from(source / UPPER, tree, link=view.shared is not None)
    finally:
        tree.close()
    try:
        view.check_room(size, entries)
    except OSError:
        remove_tree(building)
        raise
    if view.shared is not None:
        view.shared.add(linked)
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


def _copy_from(root: Path, dst: HostTree, *, link: bool) -> tuple[int, int, list[int]]:
    src = HostTree(root)
    try:
        return copy_tree(src, dst, link=link)
    finally:
        src.close()
