"""A view's nodes: the ids the kernel addresses its files by, and the path each one stands for.

A path keeps its node id while it exists in the view (tools such as git and find compare
inode numbers over time). A node goes when the kernel holds no reference to it (FORGET) and
its path is gone, or when its view goes. A node whose entry was removed or replaced is
*stale*: its path may get a new node, while the old one goes on serving what a process still
holds open (an unlinked temporary file reads back), from its orphan file if it has one.
Every change is journaled before the kernel hears of it (:mod:`._journal`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..policy import MatchState, Policy
from ..types import Permission
from ._abi import ROOT_ID
from ._journal import Dropped, Journal, Moved, New, Record, Stale, decode


class Node:
    __slots__ = ("id", "level", "lookups", "orphan", "recovered", "rel", "stale", "state")

    def __init__(self, ident: int, rel: str, state: MatchState, level: Permission) -> None:
        self.id = ident
        self.rel = rel
        self.state = state
        self.level = level
        self.lookups = 0
        self.stale = False
        self.orphan = ""  # the file in the view's orphans directory that keeps its content
        self.recovered = False  # known from the journal: the kernel's count of it is lost

    def __repr__(self) -> str:
        return f"Node({self.id}, {self.rel!r}{', stale' if self.stale else ''})"


class Nodes:
    """One view's node table (``policy`` gives each path its state and level)."""

    def __init__(self, policy: Policy, journal: Journal) -> None:
        self._policy = policy
        self.journal = journal
        start = policy.start
        self.root = Node(ROOT_ID, "", start, policy.level_of(start))
        self.root.lookups = 1
        self.by_id: dict[int, Node] = {ROOT_ID: self.root}
        self.by_path: dict[str, Node] = {"": self.root}
        self._next = ROOT_ID + 1

    def __len__(self) -> int:
        return len(self.by_id)

    # -- looking up ---------------------------------------------------------------------------

    def child_state(self, parent: Node, name: str) -> MatchState:
        return self._policy.step(parent.state, name)

    def get(self, rel: str, state: MatchState) -> Node:
        """The node of ``rel`` (made, and journaled, if the path has none yet)."""
        node = self.by_path.get(rel)
        if node is None:
            node = Node(self._next, rel, state, self._policy.level_of(state))
            self._next += 1
            self.by_id[node.id] = node
            self.by_path[rel] = node
            self.journal.add(New(node.id, rel))
        return node

    def looked_up(self, node: Node) -> None:
        node.lookups += 1

    # -- changes ------------------------------------------------------------------------------

    def forget(self, ident: int, count: int, exists: Callable[[str], bool]) -> Node | None:
        """The kernel let go of ``count`` references; the node when it is dropped."""
        node = self.by_id.get(ident)
        if node is None or node is self.root:
            return None
        node.lookups = 0 if node.recovered else node.lookups - count
        if node.lookups > 0 or not (node.stale or not exists(node.rel)):
            return None
        del self.by_id[ident]
        if not node.stale and self.by_path.get(node.rel) is node:
            del self.by_path[node.rel]
        self.journal.add(Dropped(ident))
        return node

    def removed(self, rel: str, orphan: str = "") -> Node | None:
        """The entry at ``rel`` is gone: its node (if any) is stale from now on, and a new
        entry there gets a new id. Reusing the id would make the kernel take the new entry
        for the old one a process may still hold open."""
        node = self.by_path.pop(rel, None)
        if node is None:
            return None
        node.stale = True
        node.orphan = orphan
        if node.lookups <= 0 and not node.recovered and not orphan:
            del self.by_id[node.id]
            self.journal.add(Dropped(node.id))
        else:
            self.journal.add(Stale(node.id, orphan))
        return node

    def rename(self, old: str, new: str) -> list[Node]:
        """Nodes at ``old`` and below now stand at ``new`` (a node at ``new`` is stale)."""
        prefix = old + "/"
        moved = [n for rel, n in self.by_path.items() if rel == old or rel.startswith(prefix)]
        for node in moved:
            del self.by_path[node.rel]
        for node in moved:
            node.rel = new + node.rel[len(old) :]
            node.state = self._policy.state(node.rel)
            node.level = self._policy.level_of(node.state)
            self.by_path[node.rel] = node
        self.journal.add(Moved(old, new))
        return moved

    # -- the journal --------------------------------------------------------------------------

    def maybe_compact(self) -> None:
        if self.journal.due(len(self.by_id)):
            self.journal.rewrite(self._snapshot())

    def _snapshot(self) -> Iterator[Record]:
        for node in self.by_id.values():
            if node is self.root:
                continue
            yield New(node.id, node.rel)
            if node.stale:
                yield Stale(node.id, node.orphan)

    def recover(self, data: bytes) -> None:
        """Rebuild the table from a journal (the kernel may hold any node in it)."""
        stale: dict[int, str] = {}
        paths: dict[int, str] = {}
        for record in decode(data):
            if isinstance(record, New):
                paths[record.id] = record.rel
                stale.pop(record.id, None)
                self._next = max(self._next, record.id + 1)
            elif isinstance(record, Stale):
                stale[record.id] = record.orphan
            elif isinstance(record, Dropped):
                paths.pop(record.id, None)
                stale.pop(record.id, None)
            else:
                prefix = record.old + "/"
                live = [i for i, rel in paths.items() if i not in stale]
                for ident in live:
                    rel = paths[ident]
                    if rel == record.old or rel.startswith(prefix):
                        paths[ident] = record.new + rel[len(record.old) :]
        for ident, rel in paths.items():
            state = self._policy.state(rel)
            node = Node(ident, rel, state, self._policy.level_of(state))
            node.recovered = True
            self.by_id[ident] = node
            if ident in stale:
                node.stale, node.orphan = True, stale[ident]
            else:
                self.by_path[rel] = node
