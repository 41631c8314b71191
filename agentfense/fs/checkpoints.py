"""A view's layer copied aside and back: checkpoints, and the seed of a fork.

A layer is the upper tree, the deletions and (under review) the bases. :func:`capture`
copies them into a directory of their own; :func:`restore` makes a copy of one the view's
layer. Each costs what the layer holds (its entries, and its files' bytes), never what the
codebase holds. Files are copied (a checkpoint must not change as the view goes on writing
in place); names that share one file in the upper tree (hard links) share one copy.

A restore builds the new upper tree beside the view's, then swaps the two by renames, so a
crash leaves one or the other, and only then replaces the deletions and the bases. Walks are
iterative.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ._bases import Bases
from ._host import HostTree, copy_file, remove_tree
from .view import Deletions, View, join

UPPER, DELETED, BASES = "upper", "deleted", "bases"
_RESTORING, _REPLACED = "restoring", "replaced"


def copy_tree(src: HostTree, dst: HostTree) -> tuple[int, int]:
    """Copy everything of ``src`` into the empty ``dst`` (modes and times kept); how many
    entries, and how many bytes of files, it copied."""
    entries = size = 0
    linked: dict[tuple[int, int], str] = {}  # a file with several names: its first copy
    pending = [""]
    while pending:
        current = pending.pop()
        for name, st in src.scan(current):
            rel = join(current, name)
            entries += 1
            if stat.S_ISDIR(st.st_mode):
                dst.mkdir(rel, stat.S_IMODE(st.st_mode))
                pending.append(rel)
            elif stat.S_ISLNK(st.st_mode):
                dst.symlink(src.readlink(rel), rel)
            elif stat.S_ISREG(st.st_mode):
                first = linked.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
                if first is not None:
                    dst.link(first, rel)
                    continue
                copy_file(src, rel, dst, rel)
                size += st.st_size
                if st.st_nlink > 1:
                    linked[(st.st_dev, st.st_ino)] = rel
    return entries, size


def capture(view: View, target: Path) -> tuple[int, int]:
    """Copy the view's layer into ``target`` (a new directory; its parent exists)."""
    target.mkdir(mode=0o700)
    (target / UPPER).mkdir(mode=0o700)
    upper = HostTree(target / UPPER)
    try:
        captured = copy_tree(view.upper, upper)
    finally:
        upper.close()
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
    return captured


def restore(view: View, source: Path, delta: Path) -> None:
    """Make the view's layer (in ``delta``) a copy of the one captured in ``source``."""
    building = delta / _RESTORING
    remove_tree(building)  # (what a restore cut short left)
    building.mkdir(mode=0o700)
    tree = HostTree(building)
    try:
        _copy_from(source / UPPER, tree)
    finally:
        tree.close()
    replaced = delta / _REPLACED
    remove_tree(replaced)
    os.rename(delta / UPPER, replaced)
    os.rename(building, delta / UPPER)
    view.upper.close()
    view.upper = HostTree(delta / UPPER)
    remove_tree(replaced)
    captured = Deletions(source / DELETED)
    try:
        view.deleted.replace(set(captured.paths))
    finally:
        captured.close()
    if view.bases is not None:
        bases = Bases(source / BASES)
        try:
            view.bases.replace(bases.paths)
        finally:
            bases.close()
    view.recount()


def _copy_from(root: Path, dst: HostTree) -> None:
    src = HostTree(root)
    try:
        copy_tree(src, dst)
    finally:
        src.close()
