"""A view's node table and its journal, without FUSE: what a new fs process rebuilds from the
journal is the table the dead one had (same ids at the same paths, the same stale nodes and
orphans, the same tree of children), after lookups, forgets, removals and renames made as
``operations.py`` makes them; and the journal stays within its bound."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from agentfense.fs._journal import COMPACT_AT, Journal
from agentfense.fs.nodes import Node, Nodes
from agentfense.policy import Policy
from agentfense.types import Permission, PermissionRule

POLICY = Policy([PermissionRule("**", Permission.WRITE)])
NAMES = ("a", "b", "c")


def parent_of(rel: str) -> str:
    return rel.rpartition("/")[0]


def table(nodes: Nodes) -> dict[int, tuple[str, bool, str, int | None]]:
    """Each node: its path, whether it is stale, its orphan, and its parent in the tree."""
    return {
        ident: (node.rel, node.stale, node.orphan, None if node.parent is None else node.parent.id)
        for ident, node in nodes.by_id.items()
    }


def paths(nodes: Nodes) -> dict[str, int]:
    return {rel: node.id for rel, node in nodes.by_path.items()}


def children(nodes: Nodes) -> dict[int, dict[str, int]]:
    return {
        node.id: {name: child.id for name, child in node.children.items()}
        for node in nodes.by_id.values()
        if node.children
    }


class NodeTable(RuleBasedStateMachine):
    """The kernel's side: it holds nodes it looked up, forgets leaves (a child holds its
    parent), and asks for removals and renames of entries it knows."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(os.environ["NODES_TMP"]) / f"run{next(_runs)}"
        self.dir.mkdir()
        self.nodes = Nodes(POLICY, Journal(self.dir / "nodes"))
        self.orphans = itertools.count(1)

    def teardown(self) -> None:
        self.nodes.journal.close()

    def _done(self) -> None:
        """The end of a request: written down, then (the loop's upkeep) compacted if due."""
        self.nodes.journal.flush()
        self.nodes.maybe_compact()

    def _node(self, rel: str) -> Node | None:
        return self.nodes.by_path.get(rel)

    def _held(self, data: st.DataObject, *, root: bool = False) -> Node:
        """A node the kernel holds at a path (the root too, when ``root``)."""
        held = sorted(rel for rel in self.nodes.by_path if root or rel)
        return self.nodes.by_path[data.draw(st.sampled_from(held or [""]))]

    def _child_path(self, data: st.DataObject) -> str:
        parent = self._held(data, root=True)
        name = data.draw(st.sampled_from(NAMES))
        return f"{parent.rel}/{name}" if parent.rel else name

    @rule(data=st.data())
    def lookup(self, data: st.DataObject) -> None:
        parent = self._held(data, root=True)
        if parent.rel.count("/") >= 3:
            return
        name = data.draw(st.sampled_from(NAMES))
        node = self.nodes.get(parent, name, self.nodes.child_state(parent, name))
        self.nodes.looked_up(node)
        self._done()

    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        ids = sorted(ident for ident, node in self.nodes.by_id.items() if not node.children)
        ident = data.draw(st.sampled_from(ids))
        if ident == self.nodes.root.id:
            return
        # (the kernel holds a directory while it holds an entry in it: leaves only)
        self.nodes.forget(ident, data.draw(st.integers(1, 2)))
        self._done()

    @rule(data=st.data(), keep=st.booleans())
    def remove(self, data: st.DataObject, keep: bool) -> None:
        node = self._held(data)
        if not node.rel or node.children:
            return
        orphan = str(next(self.orphans)) if keep and node.lookups > 0 else ""
        self.nodes.removed(node.rel, orphan)
        self._done()

    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        old = self._held(data).rel
        new = self._child_path(data)
        if not old or old == new or new.startswith(old + "/"):
            return
        target = self._node(new)
        if target is not None and target.children:
            return  # a directory is replaced only when empty
        self.nodes.removed(new)
        self.nodes.rename(old, new)
        self._done()

    @invariant()
    def a_new_process_rebuilds_the_same_table(self) -> None:
        again = Nodes(POLICY, Journal(self.dir / "rebuilt"))
        try:
            again.recover(self.nodes.journal.read())
            assert table(again) == table(self.nodes)
            assert paths(again) == paths(self.nodes)
            assert children(again) == children(self.nodes)
            assert again.size == self.nodes.size
        finally:
            again.journal.close()

    @invariant()
    def every_path_is_its_node_s(self) -> None:
        for rel, node in self.nodes.by_path.items():
            assert node.rel == rel
            assert not node.stale


_runs = itertools.count()


@pytest.fixture(autouse=True)
def _scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODES_TMP", str(tmp_path))


TestNodeTable = NodeTable.TestCase
TestNodeTable.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("held", [0, 5000])
def test_the_journal_stays_within_twice_the_table(tmp_path: Path, held: int) -> None:
    """A sandbox that looks up and forgets new names for ever (a build's temporary files)
    beside ``held`` nodes the kernel keeps: the journal is compacted rather than growing
    with the history. Bound: twice the table (its bytes), and no compaction below
    ``COMPACT_AT``; beyond it by one request's records at most."""
    nodes = Nodes(POLICY, Journal(tmp_path / "nodes"))
    parent = nodes.get(nodes.root, "d", nodes.child_state(nodes.root, "d"))
    nodes.looked_up(parent)
    for i in range(held):
        nodes.looked_up(nodes.get(parent, f"kept-{i}", nodes.child_state(parent, "kept")))
    compacted = 0
    for i in range(30_000):
        name = f"tmp-{i:08d}-" + "x" * 100
        node = nodes.get(parent, name, nodes.child_state(parent, name))
        nodes.looked_up(node)
        for forget in (False, True):
            if forget:
                nodes.forget(node.id, 1)
            before = nodes.journal.size
            nodes.journal.flush()
            nodes.maybe_compact()
            compacted += nodes.journal.size < before
        assert nodes.journal.size <= max(COMPACT_AT, 2 * nodes.size) + 200
    assert compacted >= 1
    again = Nodes(POLICY, Journal(tmp_path / "rebuilt"))
    again.recover(nodes.journal.read())
    assert table(again) == table(nodes)
    assert len(nodes) == held + 2
