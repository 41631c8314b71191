"""The server supervises the permission filesystem: when its process dies, a new one takes
every view over and the running sandboxes go on as if nothing happened (their sessions keep
their working directory), and nothing committed is lost."""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandbox, AsyncSandboxClient, CommitResult, SandboxError, SandboxStatus
from agentfense.errors import StatusCode
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


async def _kill_fs(server_pid: int) -> int:
    pid = await anyio.to_thread.run_sync(_fs_pid, server_pid)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


async def test_sigkill_during_a_busy_grep(tmp_path: Path) -> None:
    """Requests in flight when the process dies are answered by the next one: the grep
    reads every file, reports no error, and the sandbox goes on."""
    server = await anyio.to_thread.run_sync(start_server_process, tmp_path / "server")
    project = tmp_path / "project"
    for d in range(20):
        (project / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (project / f"d{d}" / f"f{f}.txt").write_text(f"line {d} {f}\nneedle\n" * 20)
    try:
        async with await AsyncSandbox.from_local(
            project, preset="agent-safe", endpoint=server.endpoint
        ) as sandbox:
            # A fresh file each round (its first read goes to the fs process): 12 rounds.
            script = (
                "for i in $(seq 12); do grep -rc needle /workspace/d* | wc -l;"
                " echo $i > /workspace/output/round; done"
            )
            async with anyio.create_task_group() as tg:

                async def grep() -> None:
                    result = await sandbox.run(f"mkdir -p output && {script}", timeout=120)
                    assert result.exit_code == 0, result.stderr
                    assert result.stderr == ""
                    assert result.stdout.split() == ["2000"] * 12

                tg.start_soon(grep)
                await anyio.sleep(0.3)
                killed = await _kill_fs(server.process.pid)
            assert await anyio.to_thread.run_sync(_fs_pid, server.process.pid) != killed
            assert (await sandbox.run("cat output/round")).stdout == "12\n"
            assert (await sandbox.refresh()).status is SandboxStatus.RUNNING
    finally:
        assert await anyio.to_thread.run_sync(server.stop) == 0, server.log()


async def test_sigkill_during_a_commit_tears_no_file(tmp_path: Path) -> None:
    """Killed while it moves a command's files into the codebase: every file is the old one
    or the new one, never a mix, and the commit is finished by the next process."""
    server = await anyio.to_thread.run_sync(start_server_process, tmp_path / "server")
    old, new = "old content\n" * 100, "new content\n" * 100
    project = tmp_path / "project"
    for d in range(10):
        (project / f"d{d}").mkdir(parents=True)
        for f in range(400):
            (project / f"d{d}" / f"f{f}").write_text(old)
    try:
        async with await AsyncSandbox.from_local(
            project, preset="full-access", endpoint=server.endpoint
        ) as sandbox:
            files = server.state_dir / "codebases" / sandbox.codebase_id / "files"
            command = f"for f in d*/f*; do printf '%s' {shlex.quote(new)} > $f; done; echo written"
            async with anyio.create_task_group() as tg:

                async def rewrite() -> None:
                    result = await sandbox.run(command, timeout=120)
                    assert (result.exit_code, result.stdout) == (0, "written\n"), result.stderr

                tg.start_soon(rewrite)
                # The command ends, then the server commits: kill the process during it.
                with anyio.fail_after(60):
                    while True:
                        if await anyio.to_thread.run_sync(_some_committed, files, new):
                            break
                        await anyio.sleep(0.005)
                await _kill_fs(server.process.pid)
                mixed = await anyio.to_thread.run_sync(_contents, files)
                assert mixed <= {old, new}, "a torn file in the codebase"
            assert await anyio.to_thread.run_sync(_contents, files) == {new}
            seen = await sandbox.run("cat d*/f* | sort | uniq -c")
            assert seen.stdout.split() == ["400000", "new", "content"]  # 4000 files of 100 lines
    finally:
        assert await anyio.to_thread.run_sync(server.stop) == 0, server.log()


def _some_committed(files: Path, new: str) -> bool:
    return any(p.read_text() == new for p in (files / "d0").iterdir())


def _contents(files: Path) -> set[str]:
    return {p.read_text() for p in files.glob("d*/f*")}


def _grab_control_socket(fs_pid: int) -> socket.socket:
    """A copy of the fs process's end of its control channel (``pidfd_getfd``, as root)."""
    fd_number = int((Path("/proc") / str(fs_pid) / "cmdline").read_bytes().split(b"\0")[-2])
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(fs_pid)
    try:
        fd = libc.syscall(438, pidfd, fd_number, 0)  # SYS_pidfd_getfd, x86_64 and aarch64
    finally:
        os.close(pidfd)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_getfd")
    return socket.socket(fileno=fd)


async def test_a_broken_control_channel_replaces_the_fs_process(tmp_path: Path) -> None:
    """A datagram on the control channel that is no frame of it (a bug, a stray write) means
    the fs process's answers cannot be trusted: the server replaces it and the sandbox goes
    on. (It used to stop reading replies and leave the process running, so the next
    command's commit waited forever.)"""
    server = await anyio.to_thread.run_sync(start_server_process, tmp_path)
    try:
        async with AsyncSandboxClient(server.endpoint) as client:
            codebase = await client.create_codebase("broken-channel")
            sandbox = await client.create_sandbox(codebase.id, permissions=WRITE)
            await client.start_sandbox(sandbox.id)
            await client.exec(sandbox.id, "echo before > before.txt")

            fs_pid = await anyio.to_thread.run_sync(_fs_pid, server.process.pid)
            assert fs_pid is not None
            with _grab_control_socket(fs_pid) as channel:
                channel.send(b"no frame of this channel")

            with anyio.fail_after(60):
                result = await client.exec(sandbox.id, "cat before.txt; echo after > after.txt")
            assert (result.stdout, result.exit_code) == ("before\n", 0)
            assert await client.download_file(codebase.id, "after.txt") == b"after\n"
            assert (await client.get_sandbox(sandbox.id)).status is SandboxStatus.RUNNING
            assert await anyio.to_thread.run_sync(_fs_pid, server.process.pid) not in (
                None,
                fs_pid,
            )
    finally:
        assert await anyio.to_thread.run_sync(server.stop) == 0, server.log()


async def test_a_commit_cut_short_by_a_restart_says_so(tmp_path: Path) -> None:
    """A manual commit whose fs process died midway was asked again of the next one, which
    reported only what it did itself: 8,126 paths applied, no conflict, where all 20,051
    had reached the codebase (a hostile tester's finding). A commit either says what it
    applied, all of it, or that it was cut short, and changes() says what is left."""
    server = await anyio.to_thread.run_sync(start_server_process, tmp_path)
    try:
        async with AsyncSandboxClient(server.endpoint) as client:
            codebase = await client.create_codebase("cut-short")
            sandbox = await AsyncSandbox.from_codebase(
                codebase.id, endpoint=server.endpoint, preset="development", commit="manual"
            )
            async with sandbox:
                await sandbox.run("mkdir a && cd a && for i in $(seq 8000); do : > f$i; done")
                async with anyio.create_task_group() as tg:
                    outcome: list[object] = []

                    async def commit() -> None:
                        try:
                            outcome.append(await sandbox.commit())
                        except SandboxError as exc:
                            outcome.append(exc)

                    tg.start_soon(commit)
                    await anyio.sleep(0.3)
                    await _kill_fs(server.process.pid)
                [result] = outcome
                left = {change.path for change in await sandbox.changes()}
                listed = await client.list_files(codebase.id, "a")
                committed = {f"a/{entry.path.rsplit('/', 1)[-1]}" for entry in listed}
                if isinstance(result, SandboxError):
                    assert result.code == StatusCode.UNAVAILABLE
                    assert "restarted during the commit" in str(result)
                    assert committed | left >= {f"a/f{i}" for i in range(1, 8001)}
                else:  # (it ended before the kill: then it says all it did)
                    assert isinstance(result, CommitResult)
                    assert len(result.applied) == 8001, len(result.applied)
                    assert not left
    finally:
        assert await anyio.to_thread.run_sync(server.stop) == 0, server.log()
