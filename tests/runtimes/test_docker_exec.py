"""Starting a ``docker exec``: what the server does with the engine's answers."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from agentfense.runtimes._docker_exec import _exec_pid
from agentfense.runtimes.base import CommandSpec, RuntimeError_

pytestmark = pytest.mark.anyio


async def test_an_exec_whose_process_the_engine_never_tells_does_not_start() -> None:
    """Its pid was taken as 0, and 0 written to the command's cgroup.procs moves the writer
    (the server) into the command's leaf, where the command's kill would reach it."""
    asked = 0

    async def engine(method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal asked
        asked += 1
        assert method == "exec_inspect"
        return {"Running": True, "Pid": 0, "ExitCode": None}

    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(RuntimeError_, match="never told its process"):
        await _exec_pid(engine, "exec-id", ours, CommandSpec(("true",), {}, "/workspace"))
    assert asked == 500
