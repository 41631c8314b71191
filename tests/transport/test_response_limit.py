"""A response message the client would have to buffer whole beyond its limit is refused as
soon as its length is read, and one that is not the message it answers with is a
ConnectionError naming it, on asyncio and trio alike."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import grpclib.const
import pytest
from grpclib.server import Server

from agentfense import AsyncSandboxClient, ConnectionError, ResourceLimitExceededError
from agentfense._proto.sandbox import v1 as pb
from agentfense._transport._bounded import MAX_RECEIVE_BYTES

pytestmark = pytest.mark.anyio


async def _announce_a_huge_sandbox(stream: Any) -> None:
    """Answer with a message that says it is 3 GiB long, then send it slowly."""
    await stream.recv_message()
    await stream.send_initial_metadata()
    prefix = struct.pack("?", False) + struct.pack(">I", 3 << 30)
    await stream._stream.send_data(prefix + b"\x0a" * 1024)  # the start of its body
    await asyncio.sleep(3600)


async def _answer_garbage(stream: Any) -> None:
    """Answer with a message whose first field (a string) comes as a varint."""
    await stream.recv_message()
    await stream.send_initial_metadata()
    body = b"\x08\x01"
    await stream._stream.send_data(struct.pack("?", False) + struct.pack(">I", len(body)) + body)
    await stream.send_trailing_metadata()


class _Hostile:
    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            "/sandbox.v1.SandboxService/GetSandbox": grpclib.const.Handler(
                _announce_a_huge_sandbox,
                grpclib.const.Cardinality.UNARY_UNARY,
                pb.GetSandboxRequest,
                pb.Sandbox,
            ),
            "/sandbox.v1.SandboxService/GetSession": grpclib.const.Handler(
                _answer_garbage,
                grpclib.const.Cardinality.UNARY_UNARY,
                pb.GetSessionRequest,
                pb.Session,
            ),
        }


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[str]:
    """A real grpclib server, on its own loop in a thread, that answers with a huge message."""
    path = str(tmp_path / "hostile.sock")
    ready = threading.Event()
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        server = Server([_Hostile()])
        await server.start(path=path)
        stopping = asyncio.Event()
        stop.append((asyncio.get_running_loop(), stopping))
        ready.set()
        await stopping.wait()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"unix:{path}"
    loop, stopping = stop[0]
    loop.call_soon_threadsafe(stopping.set)
    thread.join(20)


async def test_a_response_over_the_limit_is_refused_before_it_is_buffered(hostile: str) -> None:
    async with AsyncSandboxClient(hostile) as client:
        with anyio.fail_after(10), pytest.raises(ResourceLimitExceededError) as caught:
            await client.get_sandbox("sb_0000000000000000")
    assert caught.value.code == 8
    assert f"at most {MAX_RECEIVE_BYTES}" in caught.value.message


async def test_a_reply_that_does_not_decode_is_a_connection_error(hostile: str) -> None:
    """betterproto's compiled codec raises RuntimeError on such bytes: it used to reach the
    caller as is."""
    async with AsyncSandboxClient(hostile) as client:
        with anyio.fail_after(10), pytest.raises(ConnectionError) as caught:
            await client.get_session("ses_0000000000000000")
    assert "not a valid Session message" in caught.value.message
