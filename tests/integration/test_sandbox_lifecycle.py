"""The async SDK against a real server and real bwrap, on asyncio and trio."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    CommandExecutionError,
    CommandTimeoutError,
    PermissionDeniedError,
    SandboxNotRunningError,
    SandboxStatus,
)

pytestmark = pytest.mark.anyio


async def test_from_local_run_destroy(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=endpoint
    ) as sandbox:
        assert sandbox.status is SandboxStatus.RUNNING
        result = await sandbox.run("python3 src/app.py; cat README.md")
        assert result.stdout == "hello from app\n# demo\n"
        assert result.stderr == ""
        assert result.exit_code == 0
        assert result.duration.total_seconds() > 0
        sandbox_id, codebase_id = sandbox.id, sandbox.codebase_id
    async with AsyncSandboxClient(endpoint) as client:
        assert sandbox_id not in {s.id for s in await client.list_sandboxes()}
        assert codebase_id not in {c.id for c in await client.list_codebases()}


async def test_streams_stay_apart_and_exit_code_is_exact(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=endpoint
    ) as sandbox:
        result = await sandbox.run("printf out; printf err >&2; exit 42")
        assert (result.stdout, result.stderr, result.exit_code) == ("out", "err", 42)
        with pytest.raises(CommandExecutionError) as failed:
            await sandbox.run("echo nope >&2; exit 7", raise_on_error=True)
        assert failed.value.exit_code == 7
        assert failed.value.stderr == "nope\n"
        # Its own stdio can be reopened by name, as many scripts do.
        named = await sandbox.exec(
            "echo a > /dev/stdout; echo b > /dev/stderr; cat /dev/stdin", stdin="c"
        )
        assert (named.stdout, named.stderr, named.exit_code) == ("a\nc", "b\n", 0)


async def test_stdin_env_and_workdir(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=endpoint
    ) as sandbox:
        result = await sandbox.exec("tr a-z A-Z", stdin="shout\n")
        assert result.stdout == "SHOUT\n"
        result = await sandbox.run("echo $GREETING; pwd", env={"GREETING": "hi"}, workdir="src")
        assert result.stdout == "hi\n/workspace/src\n"
        result = await sandbox.run("pwd", workdir="/tmp")
        assert result.stdout == "/tmp\n"


async def test_timeout_kills_every_process_of_the_command(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="full-access", endpoint=endpoint
    ) as sandbox:
        with pytest.raises(CommandTimeoutError) as timed_out:
            # A child that leaves the session must die with the command too.
            await sandbox.run(
                "setsid sh -c 'sleep 30; touch escaped' & sleep 30; touch finished", timeout=0.5
            )
        assert timed_out.value.code == 4
        result = await sandbox.run("sleep 0.5; ps -eo args")
        assert "sleep 30" not in result.stdout
        listing = await sandbox.run("ls")
        assert "escaped" not in listing.stdout
        assert "finished" not in listing.stdout


async def test_background_jobs_and_tmp_persist_until_stop(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=endpoint
    ) as sandbox:
        await sandbox.run("echo kept > /tmp/note; (sleep 300 &) ; true")
        result = await sandbox.run("cat /tmp/note; pgrep -x sleep | wc -l")
        assert result.stdout == "kept\n1\n"
        await sandbox.stop()
        assert sandbox.status is SandboxStatus.STOPPED
        with pytest.raises(SandboxNotRunningError):
            await sandbox.run("true")
        await sandbox.start()
        result = await sandbox.run("cat /tmp/note 2>&1; pgrep -x sleep | wc -l")
        assert "No such file" in result.stdout
        assert result.stdout.endswith("0\n")


async def test_exec_stream_delivers_tagged_chunks_and_exit_code(
    endpoint: str, project: Path
) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=endpoint
    ) as sandbox:
        seen = []
        async with sandbox.exec_stream(
            "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; exit 5"
        ) as stream:
            async for chunk in stream:
                seen.append((chunk.stream.value, chunk.data))
        assert seen == [("stdout", b"one\n"), ("stderr", b"two\n"), ("stdout", b"three\n")]
        assert stream.exit_code == 5


async def test_output_beyond_the_cap_is_truncated_with_a_marker(
    endpoint: str, project: Path
) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=endpoint
    ) as sandbox:
        result = await sandbox.run("head -c 3000000 /dev/zero | tr '\\0' x; echo done >&2")
        assert result.exit_code == 0
        assert result.stdout.startswith("x" * 1000)
        assert "output truncated after 1048576 bytes; 1951424 bytes dropped" in result.stdout
        assert result.stderr == "done\n"


async def test_file_api_goes_through_the_sandbox(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="full-access", endpoint=endpoint
    ) as sandbox:
        await sandbox.write_file("/workspace/output/report.txt", "report\n")
        assert await sandbox.read_file("/workspace/output/report.txt") == "report\n"
        assert await sandbox.read_file_bytes("data.bin") == bytes(range(256)) * 4
        names = {f.name for f in await sandbox.list_files("/workspace")}
        assert names == {"src", "README.md", "data.bin", "output"}
        deep = {f.path for f in await sandbox.list_files("/workspace", recursive=True)}
        assert "/workspace/src/app.py" in deep
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=endpoint
    ) as sandbox:
        with pytest.raises(PermissionDeniedError, match=r"(?i)permission denied"):
            await sandbox.write_file("/workspace/new.txt", "x")


async def test_cancelling_the_caller_kills_the_remote_command(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="full-access", endpoint=endpoint
    ) as sandbox:
        with anyio.move_on_after(0.5):
            await sandbox.run("sleep 20; touch survived")
        # Within a second the server has killed it: nothing of it is left running.
        for _ in range(10):
            if "sleep 20" not in (await sandbox.run("ps -eo args")).stdout:
                break
            await anyio.sleep(0.1)
        else:
            pytest.fail("the command still runs a second after its caller was cancelled")
        assert "survived" not in (await sandbox.run("ls")).stdout
