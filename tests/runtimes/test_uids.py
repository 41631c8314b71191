"""Sandbox uids shared out between the servers of one host (real flock'd files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfense.runtimes._uids import NoUidLeft, UidPool


def test_two_servers_never_hold_the_same_uid(tmp_path: Path) -> None:
    first, second = UidPool(70000, 8, tmp_path), UidPool(70000, 8, tmp_path)
    taken = [first.take() for _ in range(5)] + [second.take() for _ in range(3)]
    assert sorted(taken) == list(range(70000, 70008))
    with pytest.raises(NoUidLeft, match="sandbox_uid_count"):
        second.take()
    first.release(taken[0])
    assert second.take() == taken[0]  # released: free for any server
    second.close()
    first.close()
