"""One sandbox's sessions must not cost the server its file descriptors, nor so every other
sandbox.

Each session holds three descriptors of the server (its shell's pipes) for its whole life.
Once nothing bounded how many a sandbox opened (its pids limit, 1,024 by default: ~3,000
descriptors), and when the server's descriptors ran out the next session was refused with
UNKNOWN "Internal Server Error", and so was a command of another sandbox, which did nothing
(found by the attack on issue 11). Now a sandbox has at most ``max_sessions_per_sandbox``
open sessions, and a session or a start is refused with RESOURCE_EXHAUSTED while the server
has only its reserve of descriptors left (``server/_descriptors.py``). The server's limit is
lowered here so the test needs ~20 sessions, not thousands."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from agentfense import AsyncSandbox, ResourceLimitExceededError, SandboxError
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

SERVER_FDS = 200


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server_process(tmp_path / "server")
    _, hard = resource.prlimit(running.process.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(running.process.pid, resource.RLIMIT_NOFILE, (SERVER_FDS, hard))
    yield running
    running.stop()


async def test_many_sessions_of_one_sandbox_cost_no_other_sandbox(
    small_server: ServerProcess, project: Path
) -> None:
    endpoint = small_server.endpoint
    async with AsyncExitStack() as stack:
        victim = await stack.enter_async_context(
            await AsyncSandbox.from_local(project, endpoint=endpoint)
        )
        greedy = await stack.enter_async_context(
            await AsyncSandbox.from_local(project, endpoint=endpoint)
        )
        refusal: SandboxError | None = None
        for _ in range(SERVER_FDS):
            try:
                await stack.enter_async_context(await greedy.session())
            except SandboxError as exc:
                refusal = exc
                break
        assert refusal is not None, "the server's descriptors never ran out"
        assert isinstance(refusal, ResourceLimitExceededError), (
            f"a session too many is refused with {type(refusal).__name__} "
            f"(code {refusal.code}): {refusal}"
        )
        result = await victim.run("echo unharmed")  # (another sandbox's command still runs)
        assert (result.stdout, result.exit_code) == ("unharmed\n", 0)


@pytest.fixture
def two_sessions_server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server_process(tmp_path / "server", settings={"max_sessions_per_sandbox": "2"})
    yield running
    assert running.stop() == 0, running.log()


async def test_a_sandbox_has_at_most_its_open_sessions(
    two_sessions_server: ServerProcess, project: Path
) -> None:
    endpoint = two_sessions_server.endpoint
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        first = await sandbox.session()
        async with await sandbox.session():
            with pytest.raises(ResourceLimitExceededError, match="max_sessions_per_sandbox"):
                await sandbox.session()
            await first.close()
            async with await sandbox.session() as third:  # room again
                assert (await third.exec("echo ok")).stdout == "ok\n"
