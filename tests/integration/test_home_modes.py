"""Landlock bounds what a command may create, change or remove beneath ``/home`` but not the
mode of what is there: chmod is not a Landlock right, and ``/home`` belongs to the sandbox's
uid. ``chmod 000 /home`` once made every later command and session of the sandbox fail to
start, for its whole life (found by the attack on issue 11); the next command now gives
``/home`` its mode back (the agent on bwrap, the gate on Docker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfense import AsyncSandbox, RuntimeType

pytestmark = pytest.mark.anyio

RUNTIMES = [
    pytest.param({}, id="bwrap"),
    pytest.param({"runtime": RuntimeType.DOCKER, "image": "python:3.11-slim"}, id="docker"),
]


@pytest.mark.parametrize("options", RUNTIMES)
async def test_a_command_that_locks_home_does_not_stop_later_commands(
    endpoint: str, project: Path, options: dict[str, object]
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint, **options) as sandbox:  # type: ignore[arg-type]
        await sandbox.run("chmod 000 /home")
        later = await sandbox.run("echo ok")
        assert (later.stdout, later.exit_code) == ("ok\n", 0), later.stderr
