"""Cleanup on the way out has a deadline: a server that never answers costs the caller
``cleanup_timeout`` seconds and a clear error, never a hang (under trio, asyncio, and sync)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterator

import anyio
import pytest

from agentfense import AsyncSandbox, AsyncSandboxClient, ConnectionError, Sandbox, SandboxClient
from agentfense.errors import InvalidConfigurationError, StatusCode

from ._silent_server import HANG, SilentServer

DEADLINE = 0.5
BOUND = 5.0  # what a bounded cleanup may take here, all told; HANG is far longer


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    directory = tempfile.mkdtemp(prefix="af-silent-")  # short: a socket path has a limit
    server = SilentServer(os.path.join(directory, "s.sock"))
    server.start()
    yield server
    server.stop()
    os.unlink(os.path.join(directory, "s.sock"))
    os.rmdir(directory)


def _check(error: ConnectionError, call: str, began: float) -> None:
    assert time.monotonic() - began < BOUND < HANG
    assert error.code == StatusCode.DEADLINE_EXCEEDED
    assert f"did not answer {call} within {DEADLINE:g} s" in str(error)


@pytest.mark.anyio
async def test_leaving_a_sandbox_is_bounded(silent: SilentServer) -> None:
    sandbox = await AsyncSandbox.connect("sb_1", endpoint=silent.endpoint, destroy_on_exit=True)
    sandbox.client.cleanup_timeout = DEADLINE
    began = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        async with sandbox:
            pass
    _check(caught.value, "DestroySandbox", began)
    assert silent.asked == ["DestroySandbox"]
    await sandbox.destroy()  # done once: not asked again


@pytest.mark.anyio
async def test_leaving_a_session_is_bounded(silent: SilentServer) -> None:
    async with await AsyncSandbox.connect("sb_1", endpoint=silent.endpoint) as sandbox:
        sandbox.client.cleanup_timeout = DEADLINE
        began = time.monotonic()
        with pytest.raises(ConnectionError) as caught:
            async with sandbox.session():
                pass
        _check(caught.value, "DestroySession", began)
    assert silent.asked == ["DestroySession"]


@pytest.mark.anyio
async def test_cleanup_after_a_cancellation_is_bounded(silent: SilentServer) -> None:
    sandbox = await AsyncSandbox.connect("sb_1", endpoint=silent.endpoint, destroy_on_exit=True)
    sandbox.client.cleanup_timeout = DEADLINE
    began = time.monotonic()
    with pytest.raises(ConnectionError) as caught, anyio.move_on_after(0.1):
        async with sandbox:
            await anyio.sleep(HANG)
    _check(caught.value, "DestroySandbox", began)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_cleanup_after_an_asyncio_cancellation_is_bounded(silent: SilentServer) -> None:
    sandbox = await AsyncSandbox.connect("sb_1", endpoint=silent.endpoint, destroy_on_exit=True)
    sandbox.client.cleanup_timeout = DEADLINE

    async def work() -> None:
        async with sandbox:
            await asyncio.sleep(HANG)

    began = time.monotonic()
    task = asyncio.ensure_future(work())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(ConnectionError) as caught:
        await task
    _check(caught.value, "DestroySandbox", began)


def test_leaving_a_sync_sandbox_is_bounded(silent: SilentServer) -> None:
    sandbox = Sandbox.connect("sb_1", endpoint=silent.endpoint, destroy_on_exit=True)
    sandbox.client.cleanup_timeout = DEADLINE
    began = time.monotonic()
    with pytest.raises(ConnectionError) as caught, sandbox, sandbox.session():
        pass
    _check(caught.value, "DestroySandbox", began)  # the session's error came first
    assert "DestroySession" in str(caught.value.__context__)
    assert silent.asked == ["DestroySession", "DestroySandbox"]


def test_cleanup_timeout_is_validated() -> None:
    for bad in (0, -1, float("inf"), float("nan"), "30"):
        with pytest.raises(InvalidConfigurationError, match="cleanup_timeout"):
            AsyncSandboxClient(cleanup_timeout=bad)  # type: ignore[arg-type]
    client = SandboxClient(cleanup_timeout=2)
    assert client.cleanup_timeout == 2.0
    client.close()
