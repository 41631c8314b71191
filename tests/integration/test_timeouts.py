"""A command's timeout: one policy on both sides (``agentfense._timeouts``).

``None`` is the server's default, ``0`` no timeout of the command's own up to the server's
maximum, and the client's deadline follows the server's: a command asked to run without a
timeout is never cut by the client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    CommandTimeoutError,
    InvalidConfigurationError,
)
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def short_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(
        tmp_path_factory.mktemp("timeouts"),
        settings={"default_timeout": "1", "max_timeout": "3"},
    )
    yield running
    assert running.stop() == 0, running.log()


async def test_none_is_the_default_and_zero_runs_up_to_the_maximum(
    short_server: ServerProcess, project: Path
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=short_server.endpoint) as sandbox:
        with pytest.raises(CommandTimeoutError):
            await sandbox.run("sleep 2; echo late")  # the default: 1 s
        result = await sandbox.run("sleep 2; echo ok", timeout=0)
        assert result.stdout == "ok\n"
        with pytest.raises(CommandTimeoutError):
            await sandbox.run("sleep 5; echo late", timeout=0)  # up to the maximum: 3 s
        async with sandbox.session() as session:
            with pytest.raises(CommandTimeoutError):
                await session.exec("sleep 2; echo late")
            assert (await session.exec("sleep 2; echo ok", timeout=0)).stdout == "ok\n"
        async with sandbox.exec_stream("sleep 2; echo ok", timeout=0) as stream:
            assert [chunk.data async for chunk in stream] == [b"ok\n"]
        assert stream.exit_code == 0


@pytest.mark.parametrize("anyio_backend", ["trio"])  # (its calls run on the asyncio side too)
async def test_no_timeout_outlives_the_old_client_deadline(endpoint: str, project: Path) -> None:
    """``timeout=0`` once gave the call a 30 s client deadline while the server ran the
    command under its 300 s default: it was cut at 29 s."""
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        outputs: dict[str, str] = {}

        async def plain() -> None:
            outputs["run"] = (await sandbox.run("sleep 35; echo ok", timeout=0)).stdout

        async def in_session() -> None:
            async with sandbox.session() as session:
                outputs["session"] = (await session.exec("sleep 35; echo ok", timeout=0)).stdout

        async with anyio.create_task_group() as tg:
            tg.start_soon(plain)
            tg.start_soon(in_session)
        assert outputs == {"run": "ok\n", "session": "ok\n"}


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "5"])
async def test_bad_timeouts_are_refused_before_the_call(
    client: AsyncSandboxClient, bad: object
) -> None:
    with pytest.raises(InvalidConfigurationError, match="timeout must be"):
        await client.exec("sandbox-id", "true", timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigurationError, match="timeout must be"):
        await client.session_exec("session-id", "true", timeout=bad)  # type: ignore[arg-type]
