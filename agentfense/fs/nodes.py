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
    stale: bool = False  # its path was taken over by a rename: it resolves to nothing

    @property
    def is_root(self) -> bool:
        return self.rel == ""


class Nodes:
    def __init__(self) -> None:
        self._next = pyfuse3.ROOT_INODE + 1
        self.by_ino: dict[int, Node] = {}
        self._by_path: dict[tuple[str, str], Node] = {}

    def get(self, view: View, rel: str) -> Node:
        key = (view.id, rel)
        node = self._by_path.get(key)
        if node is None:
            node = Node(self._next, view, rel)
            self._next += 1
            self.by_ino[node.ino] = node
            self._by_path[key] = node
        return node

    def find(self, view: View, rel: str) -> Node | None:
        return self._by_path.get((view.id, rel))

    def looked_up(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped references. The node stays: a path keeps its inode number for
        as long as its view exists (only a node replaced by a rename goes)."""
        node = self.by_ino.get(ino)
        if node is None:
            return
        node.lookups -= count
        if node.lookups <= 0 and node.stale:
            del self.by_ino[ino]

    def drop_view(self, view: View) -> None:
        """Forget every node of a view that is gone."""
        for key in [key for key in self._by_path if key[0] == view.id]:
            node = self._by_path.pop(key)
            self.by_ino.pop(node.ino, None)

    def rename(self, view: View, old: str, new: str) -> None:
        """Nodes at ``old`` and below now stand at ``new`` (the node at ``new`` is dropped)."""
        replaced = self._by_path.pop((view.id, new), None)
        if replaced is not None:
            replaced.stale = True
            if replaced.lookups <= 0:
                self.by_ino.pop(replaced.ino, None)
        prefix = old + "/"
        moved = [
            node
            for (view_id, rel), node in self._by_path.items()
            if view_id == view.id and (rel == old or rel.startswith(prefix))
        ]
        for node in moved:
            del self._by_path[(view.id, node.rel)]
        for node in moved:
            node.rel = new + node.rel[len(old) :]
            self._by_path[(view.id, node.rel)] = node

    def of_view(self, view: View) -> list[Node]:
        return [node for (view_id, _), node in self._by_path.items() if view_id == view.id]
