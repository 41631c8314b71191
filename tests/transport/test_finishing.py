"""``finishing()``: the calls of a cleanup block run to their end through any cancellation of
the caller (trio's, anyio's, asyncio's own ``task.cancel()``, ``wait_for``, ``gather``),
each within the block's deadline, and the cancellation reaches the caller after the block."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest
from _server_process import ServerProcess

from agentfense._proto.sandbox.v1 import GetSandboxRequest, Sandbox
from agentfense._transport import Transport, finishing, open_transport
from agentfense._transport._asyncio_side import GrpcCalls
from agentfense.errors import ConnectionError, StatusCode
from agentfense.types import TLSConfig

GET_SANDBOX = "/sandbox.v1.SandboxService/GetSandbox"
CANCEL_AFTER = 0.05  # the "slow-" calls take 0.2 s: the cancellation comes during the first


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    server = ServerProcess()
    yield server
    server.finish()


async def get(transport: Transport, sandbox_id: str) -> str:
    request = GetSandboxRequest(sandbox_id=sandbox_id)
    return str((await transport.unary(GET_SANDBOX, request, Sandbox)).id)


def cleanup(transport: Transport, done: list[str]) -> Callable[[], Awaitable[None]]:
    """Two calls in a finishing block, then an await where the cancellation must come."""

    async def run() -> None:
        with finishing(5):
            done.append(await get(transport, "slow-1"))
            done.append(await get(transport, "slow-2"))
        done.append("after the block")
        await anyio.sleep(5)
        done.append("not cancelled")

    return run


async def _native_cancel(run: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.ensure_future(run())
    await asyncio.sleep(CANCEL_AFTER)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def _wait_for(run: Callable[[], Awaitable[None]]) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run(), CANCEL_AFTER)


async def _gather(run: Callable[[], Awaitable[None]]) -> None:
    ours = asyncio.ensure_future(run())
    both = asyncio.gather(ours, asyncio.sleep(5))
    await asyncio.sleep(CANCEL_AFTER)
    both.cancel()
    with pytest.raises(asyncio.CancelledError):
        await both  # at once, as the other child is cancelled: ours goes on meanwhile
    with pytest.raises(asyncio.CancelledError):
        await ours


async def _anyio_scope(run: Callable[[], Awaitable[None]]) -> None:
    with anyio.move_on_after(CANCEL_AFTER) as scope:
        await run()
    assert scope.cancelled_caught


ASYNCIO_WAYS = {
    "task.cancel": _native_cancel,
    "wait_for": _wait_for,
    "gather": _gather,
    "anyio.move_on_after": _anyio_scope,
}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("way", ASYNCIO_WAYS)
@pytest.mark.anyio
async def test_a_block_runs_to_its_end_through_an_asyncio_cancellation(
    server: ServerProcess, way: str
) -> None:
    done: list[str] = []
    async with await open_transport(server.endpoint) as transport:
        await ASYNCIO_WAYS[way](cleanup(transport, done))
    assert done == ["slow-1", "slow-2", "after the block"]
    assert server.finish() == "no call was cancelled"


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_a_block_runs_to_its_end_through_a_trio_cancellation(server: ServerProcess) -> None:
    done: list[str] = []
    async with await open_transport(server.endpoint) as transport:
        await _anyio_scope(cleanup(transport, done))
    assert done == ["slow-1", "slow-2", "after the block"]
    assert server.finish() == "no call was cancelled"


@pytest.mark.anyio
async def test_a_call_in_a_block_has_the_blocks_deadline(server: ServerProcess) -> None:
    async with await open_transport(server.endpoint) as transport:
        began = time.monotonic()
        with pytest.raises(ConnectionError) as caught, finishing(0.3):
            await get(transport, "hang")
    assert time.monotonic() - began < 3
    assert caught.value.code == StatusCode.DEADLINE_EXCEEDED
    assert caught.value.message == (
        f"the AgentFense server at {server.endpoint} did not answer GetSandbox within 0.3 s; "
        "what it was asked to do may not be done"
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_the_deadline_holds_through_a_native_cancellation(server: ServerProcess) -> None:
    """Cancelled while its call hangs, the block waits for the call's deadline, not longer:
    the caller gets the deadline's error (a cancellation then would hide that the cleanup
    failed)."""
    async with await open_transport(server.endpoint) as transport:

        async def hanging_cleanup() -> None:
            with finishing(0.3):
                await get(transport, "hang")

        began = time.monotonic()
        task = asyncio.ensure_future(hanging_cleanup())
        await asyncio.sleep(CANCEL_AFTER)
        task.cancel()
        with pytest.raises(ConnectionError, match=r"did not answer GetSandbox within 0\.3 s"):
            await task
    assert time.monotonic() - began < 3


@pytest.mark.anyio
async def test_nested_blocks_take_the_shorter_deadline(server: ServerProcess) -> None:
    shorter = r"within 0\.2 s"
    async with await open_transport(server.endpoint) as transport:
        with finishing(60), pytest.raises(ConnectionError, match=shorter), finishing(0.2):
            await get(transport, "hang")
        with finishing(0.2), pytest.raises(ConnectionError, match=shorter), finishing(60):
            await get(transport, "hang")


def _connected(calls: GrpcCalls) -> bool:
    return calls.channel._connected


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_the_callers_own_connection_is_opened_while_a_block_calls(
    server: ServerProcess,
) -> None:
    """On asyncio a block's call runs over a connection of its own (on the SDK's loop); the
    transport's own is opened meanwhile, so the caller's next call (a start, after a create)
    does not wait for it."""
    async with await open_transport(server.endpoint) as transport:
        calls = transport._calls
        assert isinstance(calls, GrpcCalls)
        assert not _connected(calls)
        with finishing(5):
            assert await get(transport, "sb-1") == "sb-1"
        assert calls._ahead is not None
        with anyio.fail_after(5):
            await calls._ahead
        assert _connected(calls)
        assert await get(transport, "sb-2") == "sb-2"
    assert server.finish() == "no call was cancelled"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_connection_opened_ahead_in_vain_is_left_to_the_next_call(
    tmp_path: Path,
) -> None:
    endpoint = f"unix:{tmp_path}/nobody.sock"
    async with await open_transport(endpoint) as transport:
        with pytest.raises(ConnectionError, match="cannot reach"), finishing(5):
            await get(transport, "sb-1")
        with pytest.raises(ConnectionError, match="cannot reach"):
            await get(transport, "sb-1")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_closing_while_the_connection_ahead_opens_keeps_the_callers_cancellation() -> None:
    """Closing cancels the connection still opening ahead (a TLS handshake with a server that
    never answers) and waits for its end: a cancellation of the caller that comes meanwhile
    is the caller's, and reaches it, and the connection is closed all the same."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts (the kernel does) but never answers
        port = listener.getsockname()[1]
        transport = await open_transport(f"127.0.0.1:{port}", tls=TLSConfig())
        calls = transport._calls
        assert isinstance(calls, GrpcCalls)
        calls.connect_ahead()
        await asyncio.sleep(0.1)
        ahead = calls._ahead
        assert ahead is not None
        assert not ahead.done()  # (handshaking)
        closing = asyncio.get_running_loop().create_task(transport.aclose())
        await asyncio.sleep(0)  # (it has cancelled the connection ahead, and waits for it)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert ahead.done()
        assert not calls.channel._connected
