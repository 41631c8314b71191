"""What each tenant's codebases hold in all, as the store keeps it for the quota checks:
new codebases, uploads and commits, a codebase counted after a start, one deleted."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfense.server.codebase_usage import CodebaseUsage, Usage

pytestmark = pytest.mark.anyio


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


async def test_a_tenants_holdings_follow_its_codebases(tmp_path: Path) -> None:
    usage = CodebaseUsage()
    usage.track("cb_new", "alice", Usage(0, 0, 0))
    usage.track("cb_loaded", "alice", None)  # (after a start: not counted yet)
    usage.track("cb_theirs", "bob", Usage(0, 0, 0))
    usage.changed("cb_new", 10, 2, 1)  # an upload: a file in a new directory
    usage.changed("cb_theirs", 99, 1, 1)
    assert usage.held("alice") == (10, 2)
    assert usage.uncounted("alice") == ["cb_loaded"]
    loaded = _tree(tmp_path / "loaded", {"a.txt": b"abc", "d/b.txt": b"de"})
    counted = await usage.count("cb_loaded", "alice", loaded, files=False)
    assert counted == Usage(5, 2, 3)
    assert (usage.held("alice"), usage.uncounted("alice")) == ((15, 5), [])
    usage.changed("cb_new", -4, 0, None)  # a commit: files not known, bytes and entries are
    assert usage.held("alice") == (11, 5)
    usage.forget("cb_loaded")
    assert usage.held("alice") == (6, 2)
    assert usage.held("bob") == (99, 1)
