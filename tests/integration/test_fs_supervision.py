"""The server supervises the permission filesystem: when its process dies, a new one takes
every view over and the running sandboxes go on as if nothing happened (their sessions keep
their working directory), and nothing committed is lost."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandboxClient, SandboxStatus
from agentfense.testing import start_server_process

pytestmark = pytest.mark.anyio

WRITE = [{"pattern": "**", "permission": "write"}]


def _fs_pid(server_pid: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid"))
        if ppid == server_pid and b"agentfense.fs" in cmdline:
            return int(entry.name)
    return None


async def test_a_dead_fs_process_is_replaced_and_the_sandboxes_go_on(tmp_path: Path) -> None:
    server = await anyio.to_thread.run_sync(start_server_process, tmp_path)
    try:
        async with AsyncSandboxClient(server.endpoint) as client:
            codebase = await client.create_codebase("supervised")
            await client.upload_file(codebase.id, "kept.txt", b"uploaded\n")
            sandbox = await client.create_sandbox(codebase.id, permissions=WRITE)
            await client.start_sandbox(sandbox.id)
            await client.exec(sandbox.id, "echo committed > made.txt; mkdir -p deep/er")
            session = await client.create_session(sandbox.id)
            await client.session_exec(session.id, "cd deep/er && echo here > mark")

            fs_pid = await anyio.to_thread.run_sync(_fs_pid, server.process.pid)
            assert fs_pid is not None
            os.kill(fs_pid, signal.SIGKILL)

            # The sandbox never notices: its next command is served by the new process.
            result = await client.exec(sandbox.id, "cat kept.txt made.txt; echo more > more.txt")
            assert (result.stdout, result.exit_code) == ("uploaded\ncommitted\n", 0)
            assert (await client.get_sandbox(sandbox.id)).status is SandboxStatus.RUNNING
            new_pid = await anyio.to_thread.run_sync(_fs_pid, server.process.pid)
            assert new_pid not in (None, fs_pid)
            assert await client.download_file(codebase.id, "more.txt") == b"more\n"
            # The session's shell still stands in the directory it was in.
            here = await client.session_exec(session.id, "pwd; cat mark")
            assert here.stdout == "/workspace/deep/er\nhere\n", here.stderr
            # A sandbox created after the restart works too.
            other = await client.create_sandbox(codebase.id, permissions=WRITE)
            await client.start_sandbox(other.id)
            assert (await client.exec(other.id, "cat more.txt")).stdout == "more\n"
    finally:
        assert await anyio.to_thread.run_sync(server.stop) == 0, server.log()
