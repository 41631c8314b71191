"""A program that names no endpoint reaches the server that ``AGENTFENSE_ENDPOINT`` names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentfense import AsyncSandbox, Sandbox
from agentfense.testing import ServerProcess


@pytest.mark.anyio
async def test_async_sandbox_finds_the_server_through_the_variable(
    server: ServerProcess, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTFENSE_ENDPOINT", server.endpoint)
    async with await AsyncSandbox.from_local(project, preset="read-only") as sandbox:
        result = await sandbox.run("cat README.md")
    assert result.stdout == "# demo\n"


def test_sync_sandbox_finds_the_server_through_the_variable(
    server: ServerProcess, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTFENSE_ENDPOINT", server.endpoint)
    with Sandbox.from_local(project, preset="read-only") as sandbox:
        assert sandbox.run("cat README.md").stdout == "# demo\n"


def test_a_program_in_a_child_process_reads_the_variable(
    server: ServerProcess, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a user runs it: the variable set in the shell, nothing in the program."""
    program = (
        "import sys\nfrom agentfense import Sandbox\n"
        "with Sandbox.from_local(sys.argv[1], preset='read-only') as sandbox:\n"
        "    print(sandbox.run('cat README.md').stdout, end='')\n"
    )
    monkeypatch.setenv("AGENTFENSE_ENDPOINT", server.endpoint)
    done = subprocess.run(
        [sys.executable, "-c", program, str(project)], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (0, "# demo\n"), done.stderr
