"""Sessions through the async SDK against a real server and real bwrap, on asyncio and trio."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    AsyncSessionWrapper,
    CommandTimeoutError,
    InvalidConfigurationError,
    OutputStream,
    SandboxNotRunningError,
    SessionClosedError,
    SessionNotFoundError,
    SessionStatus,
)

from ._procs import host_pids_running, until_gone, until_running

pytestmark = pytest.mark.anyio


def _marker() -> str:
    """A sleep duration (about 300 s) no other process has: its command line finds it."""
    return f"300.{uuid.uuid4().int % 10**9}"


async def test_state_persists_between_commands(endpoint: str, project: Path) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        await sandbox.session() as session,
    ):
        assert session.shell == "bash"
        await session.exec("cd /workspace/src")
        await session.exec("export COUNT=41; bump() { COUNT=$((COUNT + 1)); }")
        await session.exec("bump")
        result = await session.exec("pwd; echo $COUNT; sh -c 'echo $COUNT'")
        assert result.stdout == "/workspace/src\n42\n42\n"
        await session.exec("sleep 300 &")
        jobs = await session.exec("jobs -l | wc -l; kill -0 $! && echo alive")
        assert jobs.stdout == "1\nalive\n"


async def test_any_command_text_works_and_output_is_exact(endpoint: str, project: Path) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        cases = {
            "printf 'no newline'": ("no newline", "", 0),
            "echo hi # a trailing comment": ("hi\n", "", 0),
            "echo started; sleep 60 &": ("started\n", "", 0),
            "cat <<'EOF'\n  $HOME 'quoted' \\ \nEOF": ("  $HOME 'quoted' \\ \n", "", 0),
            "printf ' lead\\r\\n\\n\\ttrail  '": (" lead\r\n\n\ttrail  ", "", 0),
            "echo out; echo err >&2; (exit 7)": ("out\n", "err\n", 7),
            "cat; echo after-stdin": ("after-stdin\n", "", 0),  # stdin is empty
            "if": None,  # a syntax error: reported, the session goes on
            "exec >/dev/null; echo hidden": ("", "", 0),  # the shell's own stdout moved away
            "exec >/dev/stderr; echo back": ("", "back\n", 0),
        }
        big = await session.exec("head -c 300000 /dev/zero | tr '\\0' x")
        assert big.stdout == "x" * 300000
        for command, expected in cases.items():
            result = await session.exec(command)
            if expected is None:
                assert result.exit_code == 2
                assert "syntax error" in result.stderr
            else:
                assert (result.stdout, result.stderr, result.exit_code) == expected, command


async def test_exit_closes_the_session(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        session = await sandbox.session()
        result = await session.exec("echo bye; exit 3")
        assert (result.stdout, result.exit_code) == ("bye\n", 3)
        info = await session.refresh()
        assert info.status is SessionStatus.CLOSED
        assert info.closed_at is not None
        listed = await sandbox.client.list_sessions(sandbox.id)
        assert [(s.id, s.status) for s in listed] == [(session.id, SessionStatus.CLOSED)]
        with pytest.raises(SessionClosedError):
            await session.exec("true")
        await session.close()
        with pytest.raises(SessionNotFoundError):
            await session.refresh()


async def test_concurrent_execs_run_one_after_another_in_order(
    endpoint: str, project: Path
) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        await session.exec("log=/tmp/order.log")

        async def step(i: int) -> None:
            await session.exec(f"echo start {i} >> $log; sleep 0.2; echo end {i} >> $log")

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(step, i)
                await anyio.sleep(0.05)  # the requests reach the server in this order
        log = (await session.exec("cat $log")).stdout.split("\n")
        assert log[:-1] == [f"{what} {i}" for i in range(4) for what in ("start", "end")]


async def test_timeout_kills_the_command_and_keeps_the_session(
    endpoint: str, project: Path
) -> None:
    before, during = _marker(), _marker()
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        await session.exec(f"cd /tmp; kept=yes; sleep {before} &")
        await until_running(f"sleep\0{before}")
        with pytest.raises(CommandTimeoutError):
            await session.exec(f"sleep {during} & sleep {during}", timeout=0.5)
        assert await until_gone(f"sleep\0{during}")
        result = await session.exec("pwd; echo $kept")
        assert result.stdout == "/tmp\nyes\n"
        assert host_pids_running(f"sleep\0{before}")  # an earlier command's job lives on


async def test_a_stuck_builtin_loop_is_stopped_and_the_session_kept(
    endpoint: str, project: Path
) -> None:
    # The loop is the shell itself: the driver's INT trap breaks it, and the shell goes on.
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        session = await sandbox.session()
        await session.exec("kept=yes")
        with pytest.raises(CommandTimeoutError, match="state are kept"):
            await session.exec("while :; do :; done; echo after", timeout=0.3)
        assert (await session.refresh()).status is SessionStatus.ACTIVE
        assert (await session.exec("echo $kept")).stdout == "yes\n"


async def test_a_shell_that_cannot_be_stopped_is_closed_on_timeout(
    endpoint: str, project: Path
) -> None:
    # sh has no way to skip the rest of a line: closing it is the only honest stop.
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        session = await sandbox.session(shell="/bin/sh")
        with pytest.raises(CommandTimeoutError, match="session was closed"):
            await session.exec("sleep 3; touch /tmp/flag", timeout=0.3)
        assert (await session.refresh()).status is SessionStatus.CLOSED
        await anyio.sleep(3)
        assert (await sandbox.run("test -e /tmp/flag || echo absent")).stdout == "absent\n"


async def test_destroying_a_session_kills_its_processes(endpoint: str, project: Path) -> None:
    marker = _marker()
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        async with sandbox.session() as session:
            await session.exec(f"sleep {marker} &")
            await until_running(f"sleep\0{marker}")
        assert await until_gone(f"sleep\0{marker}")
        with pytest.raises(SessionNotFoundError):
            await session.refresh()


async def test_stopping_or_destroying_the_sandbox_closes_its_sessions(
    endpoint: str, project: Path
) -> None:
    marker = _marker()
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        session = await sandbox.session()
        await session.exec(f"sleep {marker} &")
        await until_running(f"sleep\0{marker}")
        await sandbox.stop()
        assert await until_gone(f"sleep\0{marker}")
        assert (await session.refresh()).status is SessionStatus.CLOSED
        with pytest.raises(SessionClosedError):
            await session.exec("true")
        with pytest.raises(SandboxNotRunningError):
            await sandbox.session()
        await sandbox.start()
        second = await sandbox.session()
    with pytest.raises(SessionNotFoundError):
        async with AsyncSandboxClient(endpoint) as client:
            await client.get_session(second.id)


async def test_exec_stream_delivers_output_while_the_command_runs(
    endpoint: str, project: Path
) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        await session.exec("cd /tmp")
        # The command waits for a file that we create only once its first line has come.
        command = "echo first; while [ ! -e go ]; do sleep 0.02; done; echo last >&2; exit 4"
        chunks = []
        with anyio.fail_after(20):
            async with session.exec_stream(command) as stream:
                async for chunk in stream:
                    chunks.append(chunk)
                    if chunk.data == b"first\n":
                        await sandbox.run("touch /tmp/go")
        assert [(c.stream, c.data) for c in chunks] == [
            (OutputStream.STDOUT, b"first\n"),
            (OutputStream.STDERR, b"last\n"),
        ]
        assert stream.exit_code == 4


async def test_sessions_of_one_sandbox_run_in_parallel(endpoint: str, project: Path) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox,
        await sandbox.session() as waiter,
        await sandbox.session() as other,
    ):
        # Each waits for the other's file: they finish only if they run at the same time.
        async def one(session: AsyncSessionWrapper, mine: str, theirs: str) -> int:
            command = f"touch /tmp/{mine}; while [ ! -e /tmp/{theirs} ]; do sleep 0.02; done"
            return (await session.exec(command, timeout=20)).exit_code

        codes: list[int] = []

        async def run(session: AsyncSessionWrapper, mine: str, theirs: str) -> None:
            codes.append(await one(session, mine, theirs))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, waiter, "a", "b")
            tg.start_soon(run, other, "b", "a")
        assert codes == [0, 0]


async def test_shell_and_env_at_creation(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        async with sandbox.session(shell="/bin/sh", env={"STAGE": "build"}) as session:
            assert session.shell == "/bin/sh"
            result = await session.exec('echo "$STAGE ${BASH_VERSION:-none}"')
            assert result.stdout == "build none\n"
        with pytest.raises(InvalidConfigurationError, match="shell"):
            await sandbox.session(shell="/no/such/shell")
        with pytest.raises(InvalidConfigurationError, match="env name"):
            await sandbox.session(env={"1BAD": "x"})


async def test_session_writes_are_committed_after_each_command(
    endpoint: str, project: Path
) -> None:
    async with (
        await AsyncSandbox.from_local(project, preset="agent-safe", endpoint=endpoint) as sandbox,
        sandbox.session() as session,
    ):
        await session.exec("mkdir -p /workspace/output && echo report > /workspace/output/r.txt")
        data = await sandbox.client.download_file(sandbox.codebase_id, "output/r.txt")
        assert data == b"report\n"
        denied = await session.exec("echo x > /workspace/README.md")
        assert denied.exit_code != 0
        assert "Permission denied" in denied.stderr
