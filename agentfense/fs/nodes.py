"""A view's nodes: the ids the kernel addresses its files by, and the path each one stands for.

A node lives while the kernel holds it: it goes at FORGET (or when its view goes), and a
path looked up again later gets a new id. A node whose entry was removed or replaced is
*stale*: its path may get a new node, while the old one goes on serving what a process still
holds open (an unlinked temporary file reads back), from its orphan file if it has one.

The table is bounded: past :data:`BUDGET` bytes (a node costs about 300 bytes and its path),
the kernel is asked to drop the entries of the nodes used longest ago (it then forgets those
no process holds), so that no sandbox can grow the fs process's memory, or its journal on
disk, beyond that. Each directory node knows its children in the table: a rename moves what
is below it without looking at the rest. Every change is journaled before the kernel hears
of it (:mod:`._journal`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from ..policy import MatchState, Policy
from ..types import Permission
from ._abi import ROOT_ID
from ._journal import Dropped, Journal, Moved, New, Record, Stale, decode

BUDGET = 16 << 20  # bytes of node table per view
_NODE_COST = 300  # bytes a node costs beside its path (object, two dict entries)
_EVICT_BATCH = 8192  # entries asked to go at once, at most


class Node:
    __slots__ = (
        "children",
        "id",
        "level",
        "lookups",
        "orphan",
        "parent",
        "recovered",
        "rel",
        "stale",
        "state",
        "used",
    )

    def __init__(
        self, ident: int, rel: str, state: MatchState, level: Permission, parent: Node | None
    ) -> None:
        self.id = ident
        self.rel = rel
        self.state = state
        self.level = level
        self.parent = parent
        self.children: dict[str, Node] | None = None  # by name, for directories with some
        self.lookups = 0
        self.stale = False
        self.orphan = ""  # the file in the view's orphans directory that keeps its content
        self.recovered = False  # known from the journal: the kernel's count of it is lost
        self.used = 0  # the table's clock when the kernel last heard of it

    @property
    def name(self) -> str:
        return self.rel.rpartition("/")[2]

    def __repr__(self) -> str:
        return f"Node({self.id}, {self.rel!r}{', stale' if self.stale else ''})"


def _cost(rel: str) -> int:
    return _NODE_COST + len(rel)


class Nodes:
    """One view's node table (``policy`` gives each path its state and level)."""

    def __init__(self, policy: Policy, journal: Journal, budget: int = BUDGET) -> None:
        self._policy = policy
        self.journal = journal
        self.budget = budget
        start = policy.start
        self.root = Node(ROOT_ID, "", start, policy.level_of(start), None)
        self.root.lookups = 1
        self.by_id: dict[int, Node] = {ROOT_ID: self.root}
        self.by_path: dict[str, Node] = {"": self.root}
        self._next = ROOT_ID + 1
        self._clock = 0
        self.size = 0  # bytes, against BUDGET
        self._evicted: set[int] = set()  # asked to go; not asked again

    def __len__(self) -> int:
        return len(self.by_id)

    def clear(self) -> None:
        """Drop every node (the view is closed): parents and children refer to each other,
        and a tree left whole would wait for a full garbage collection."""
        for node in self.by_id.values():
            node.parent = node.children = None
        self.by_id.clear()
        self.by_path.clear()

    # -- looking up ---------------------------------------------------------------------------

    def child_state(self, parent: Node, name: str) -> MatchState:
        return self._policy.step(parent.state, name)

    def get(self, parent: Node, name: str, state: MatchState) -> Node:
        """The node of ``name`` in ``parent`` (made, and journaled, if it has none yet)."""
        rel = f"{parent.rel}/{name}" if parent.rel else name
        node = self.by_path.get(rel)
        if node is None:
            node = Node(self._next, rel, state, self._policy.level_of(state), parent)
            self._next += 1
            self.by_id[node.id] = node
            self.by_path[rel] = node
            self._adopt(parent, node)
            self.size += _cost(rel)
            self.journal.add(New(node.id, rel))
        return node

    def looked_up(self, node: Node) -> None:
        node.lookups += 1
        self._clock += 1
        node.used = self._clock

    @staticmethod
    def _adopt(parent: Node, node: Node) -> None:
        node.parent = parent
        if parent.children is None:
            parent.children = {}
        parent.children[node.name] = node

    @staticmethod
    def _disown(node: Node) -> None:
        parent = node.parent
        if parent is not None and parent.children is not None:
            if parent.children.get(node.name) is node:
                del parent.children[node.name]
            if not parent.children:
                parent.children = None
        node.parent = None

    # -- changes ------------------------------------------------------------------------------

    def forget(self, ident: int, count: int) -> Node | None:
        """The kernel let go of ``count`` references; the node when it is dropped."""
        node = self.by_id.get(ident)
        if node is None or node is self.root:
            return None
        node.lookups = 0 if node.recovered else node.lookups - count
        if node.lookups > 0:
            return None
        self._drop(node)
        return node

    def _drop(self, node: Node) -> None:
        del self.by_id[node.id]
        if not node.stale and self.by_path.get(node.rel) is node:
            del self.by_path[node.rel]
            self._disown(node)
        self._evicted.discard(node.id)
        self.size -= _cost(node.rel)
        self.journal.add(Dropped(node.id))

    def removed(self, rel: str, orphan: str = "") -> Node | None:
        """The entry at ``rel`` is gone: its node (if any) is stale from now on, and a new
        entry there gets a new id. Reusing the id would make the kernel take the new entry
        for the old one a process may still hold open."""
        node = self.by_path.pop(rel, None)
        if node is None:
            return None
        self._disown(node)
        node.stale = True
        node.orphan = orphan
        if node.lookups <= 0 and not node.recovered and not orphan:
            del self.by_id[node.id]
            self.size -= _cost(node.rel)
            self.journal.add(Dropped(node.id))
        else:
            self.journal.add(Stale(node.id, orphan))
        return node

    def rename(self, old: str, new: str) -> list[Node]:
        """Nodes at ``old`` and below now stand at ``new`` (a node at ``new`` is stale)."""
        top = self.by_path.get(old)
        if top is None:
            return []
        parent = self.by_path.get(new.rpartition("/")[0] if "/" in new else "")
        moved = list(subtree(top))
        for node in moved:
            del self.by_path[node.rel]
        self._disown(top)
        for node in moved:
            self.size += len(new) - len(old)
            node.rel = new + node.rel[len(old) :]
            node.state = self._policy.state(node.rel)
            node.level = self._policy.level_of(node.state)
            self.by_path[node.rel] = node
        if parent is not None:
            self._adopt(parent, top)
        self.journal.add(Moved(old, new))
        return moved

    # -- the budget ---------------------------------------------------------------------------

    def over_budget(self) -> list[tuple[int, bytes]]:
        """When the table is past its budget: entries to ask the kernel to drop, as
        (parent id, name), the least recently used first, leaves only (a directory's entry
        goes once its children have)."""
        if self.size <= self.budget:
            return []
        excess = self.size - self.budget * 3 // 4  # down to three quarters: room to grow again
        chosen: list[tuple[int, bytes]] = []
        horizon = self._clock - len(self.by_id) // 4  # used since then: spared this time
        for node in list(self.by_id.values()):
            if excess <= 0 or len(chosen) >= _EVICT_BATCH:
                break
            if node is self.root or node.stale or node.children or node.id in self._evicted:
                continue
            if node.used > horizon or node.parent is None:
                continue
            self._evicted.add(node.id)
            excess -= _cost(node.rel)
            chosen.append((node.parent.id, os.fsencode(node.name)))
        return chosen

    # -- the journal --------------------------------------------------------------------------

    def maybe_compact(self) -> None:
        if self.journal.due(self.size):
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
        by_rel: dict[str, int] = {}
        for record in decode(data):
            if isinstance(record, New):
                paths[record.id] = record.rel
                by_rel[record.rel] = record.id
                stale.pop(record.id, None)
                self._next = max(self._next, record.id + 1)
            elif isinstance(record, Stale):
                stale[record.id] = record.orphan
                if by_rel.get(paths.get(record.id, "")) == record.id:
                    del by_rel[paths[record.id]]
            elif isinstance(record, Dropped):
                rel = paths.pop(record.id, None)
                stale.pop(record.id, None)
                if rel is not None and by_rel.get(rel) == record.id:
                    del by_rel[rel]
            else:
                prefix = record.old + "/"
                moving = [
                    (rel, ident)
                    for rel, ident in by_rel.items()
                    if rel == record.old or rel.startswith(prefix)
                ]
                for rel, _ in moving:
                    del by_rel[rel]
                for rel, ident in moving:
                    paths[ident] = record.new + rel[len(record.old) :]
                    by_rel[paths[ident]] = ident
        # Parents before children: each node hangs under its parent's.
        for ident, rel in sorted(paths.items(), key=lambda item: item[1].count("/")):
            state = self._policy.state(rel)
            parent_rel = rel.rpartition("/")[0]
            parent = None if ident in stale else self.by_path.get(parent_rel)
            node = Node(ident, rel, state, self._policy.level_of(state), None)
            node.recovered = True
            self.by_id[ident] = node
            self.size += _cost(rel)
            if ident in stale:
                node.stale, node.orphan = True, stale[ident]
            elif by_rel.get(rel) == ident:
                self.by_path[rel] = node
                if parent is not None:
                    self._adopt(parent, node)


def subtree(top: Node) -> Iterator[Node]:
    pending = [top]
    while pending:
        node = pending.pop()
        yield node
        if node.children:
            pending.extend(node.children.values())
