"""Inode numbers for the paths of every view, stable for as long as the view exists."""

from __future__ import annotations

from dataclasses import dataclass

import pyfuse3

from .view import View


@dataclass(eq=False)
class Node:
    ino: int
    view: View
    rel: str
    lookups: int = 0
    stale: bool = False  # its entry was removed or replaced: it resolves to nothing

    @property
    def is_root(self) -> bool:
        return self.rel == ""


class Nodes:
    """Each view's nodes by path, and every node by inode number.

    A path keeps its inode number while it exists in its view; a node goes when the kernel
    holds no reference to it and its path is gone (so create/unlink loops do not grow the
    table), when its view goes, or when its entry is removed or a rename takes its path over.
    """

    def __init__(self) -> None:
        self._next = pyfuse3.ROOT_INODE + 1
        self.by_ino: dict[int, Node] = {}
        self._by_view: dict[str, dict[str, Node]] = {}

    def get(self, view: View, rel: str) -> Node:
        paths = self._by_view.setdefault(view.id, {})
        node = paths.get(rel)
        if node is None:
            node = Node(self._next, view, rel)
            self._next += 1
            self.by_ino[node.ino] = node
            paths[rel] = node
        return node

    def find(self, view: View, rel: str) -> Node | None:
        return self._by_view.get(view.id, {}).get(rel)

    def looked_up(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self.by_ino.get(ino)
        if node is None:
            return
        node.lookups -= count
        if node.lookups > 0 or node.is_root:
            return
        if node.stale or node.view.locate(node.rel) is None:
            del self.by_ino[ino]
            paths = self._by_view.get(node.view.id, {})
            if not node.stale and paths.get(node.rel) is node:
                del paths[node.rel]

    def drop_view(self, view: View) -> None:
        """Forget every node of a view that is gone."""
        for node in self._by_view.pop(view.id, {}).values():
            self.by_ino.pop(node.ino, None)

    def removed(self, view: View, rel: str) -> None:
        """The entry at ``rel`` is gone: its node resolves to nothing, and a new entry there
        gets a new inode number. Reusing the number would make the kernel take the new entry
        for the old one a process may still hold open: that process's writes would show in
        the new file through the page cache, and a new entry of another type turns the old
        inode bad (EIO on its next write or close)."""
        node = self._by_view.get(view.id, {}).pop(rel, None)
        if node is not None:
            node.stale = True
            if node.lookups <= 0:
                self.by_ino.pop(node.ino, None)

    def rename(self, view: View, old: str, new: str) -> None:
        """Nodes at ``old`` and below now stand at ``new`` (the node at ``new`` is dropped)."""
        self.removed(view, new)
        paths = self._by_view.setdefault(view.id, {})
        prefix = old + "/"
        moved = [node for rel, node in paths.items() if rel == old or rel.startswith(prefix)]
        for node in moved:
            del paths[node.rel]
        for node in moved:
            node.rel = new + node.rel[len(old) :]
            paths[node.rel] = node
