"""The client transport against a real grpclib server, under asyncio and under trio."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import sniffio
from _grpc_test_server import ServerThread

from agentfense._proto.sandbox.v1 import (
    ExecOutput,
    ExecRequest,
    GetSandboxRequest,
    Sandbox,
    UploadChunk,
    UploadChunkMetadata,
    UploadResult,
)
from agentfense._transport import Endpoint, Transport, open_transport, parse_endpoint
from agentfense.errors import (
    CommandTimeoutError,
    ConnectionError,
    InvalidConfigurationError,
    SandboxError,
    SandboxNotFoundError,
)
from agentfense.types import TLSConfig

pytestmark = pytest.mark.anyio

GET_SANDBOX = "/sandbox.v1.SandboxService/GetSandbox"
EXEC_STREAM = "/sandbox.v1.SandboxService/ExecStream"
UPLOAD_FILES = "/sandbox.v1.CodebaseService/UploadFiles"


@pytest.fixture(params=["unix", "tcp"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    socket_path = str(tmp_path / "s.sock")
    short_dir = None
    if len(socket_path) > 100:  # beyond sun_path's limit
        short_dir = tempfile.mkdtemp(prefix="af-")
        socket_path = os.path.join(short_dir, "s.sock")
    thread = ServerThread(str(request.param), socket_path)
    thread.start()
    yield thread
    thread.stop()
    if short_dir is not None:
        Path(socket_path).unlink(missing_ok=True)
        os.rmdir(short_dir)


async def eventually(flag: threading.Event, within: float) -> bool:
    deadline = time.monotonic() + within
    while not flag.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110 - set by a thread
        await anyio.sleep(0.01)
    return flag.is_set()


async def get(transport: Transport, sandbox_id: str, deadline: float | None = None) -> Sandbox:
    request = GetSandboxRequest(sandbox_id=sandbox_id)
    return await transport.unary(GET_SANDBOX, request, Sandbox, timeout=deadline)


async def test_unary_round_trip(server: ServerThread) -> None:
    async with await open_transport(server.endpoint) as transport:
        sandbox = await get(transport, "sb_1")
        again = await get(transport, "sb_2")
    assert (sandbox.id, again.id) == ("sb_1", "sb_2")


async def test_status_maps_to_typed_error(server: ServerThread) -> None:
    async with await open_transport(server.endpoint) as transport:
        with pytest.raises(SandboxNotFoundError) as caught:
            await get(transport, "missing-x")
    assert caught.value.code == 5
    assert "sandbox missing-x not found" in str(caught.value)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_nothing_listening_is_connection_error_quickly(kind: str, tmp_path: Path) -> None:
    if kind == "tcp":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            endpoint = f"127.0.0.1:{sock.getsockname()[1]}"
    else:
        endpoint = f"unix:{tmp_path / 'nobody.sock'}"
    started = time.monotonic()
    async with await open_transport(endpoint) as transport:
        with pytest.raises(ConnectionError, match="cannot reach the AgentFense server at"):
            await get(transport, "sb_1")
    assert time.monotonic() - started < 2


async def test_server_stream_delivers_all_in_order(server: ServerThread) -> None:
    request = ExecRequest(command="200")
    async with (
        await open_transport(server.endpoint) as transport,
        transport.server_stream(EXEC_STREAM, request, ExecOutput) as stream,
    ):
        received = [message.data async for message in stream]
    assert received == [str(i).encode() for i in range(200)]


async def test_server_stream_error_after_messages(server: ServerThread) -> None:
    request = ExecRequest(command="3", stdin="fail")
    received = []

    async def consume(transport: Transport) -> None:
        async with transport.server_stream(EXEC_STREAM, request, ExecOutput) as stream:
            async for message in stream:
                received.append(message.data)

    async with await open_transport(server.endpoint) as transport:
        with pytest.raises(SandboxNotFoundError):
            await consume(transport)
    assert received == [b"0", b"1", b"2"]


async def test_cancelling_unary_cancels_the_handler(server: ServerThread) -> None:
    async with await open_transport(server.endpoint) as transport:
        with anyio.move_on_after(0.3) as scope:
            await get(transport, "hang")
        assert scope.cancelled_caught
        assert server.observed.started.is_set()
        assert await eventually(server.observed.cancelled, within=1)
        assert (await get(transport, "sb_after")).id == "sb_after"  # the channel still works


async def test_cancelling_server_stream_cancels_the_handler(server: ServerThread) -> None:
    request = ExecRequest(command="1", stdin="hang")
    received = []
    async with await open_transport(server.endpoint) as transport:
        with anyio.move_on_after(0.3) as scope:
            async with transport.server_stream(EXEC_STREAM, request, ExecOutput) as stream:
                async for message in stream:
                    received.append(message.data)
        assert scope.cancelled_caught
        assert received == [b"0"]
        assert await eventually(server.observed.cancelled, within=1)


async def test_leaving_server_stream_early_cancels_the_handler(server: ServerThread) -> None:
    request = ExecRequest(command="2", stdin="hang")
    async with await open_transport(server.endpoint) as transport:
        async with transport.server_stream(EXEC_STREAM, request, ExecOutput) as stream:
            async for message in stream:
                assert message.data == b"0"
                break
        assert await eventually(server.observed.started, within=1)
        assert await eventually(server.observed.cancelled, within=1)


async def test_deadline_is_command_timeout(server: ServerThread) -> None:
    async with await open_transport(server.endpoint) as transport:
        with pytest.raises(CommandTimeoutError) as caught:
            await get(transport, "hang", deadline=0.3)
        assert caught.value.code == 4
        assert await eventually(server.observed.cancelled, within=1)


async def test_cancelling_a_task_group_cancels_every_call(server: ServerThread) -> None:
    async with await open_transport(server.endpoint) as transport:
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(get, transport, "hang")
            await anyio.sleep(0.3)
            group.cancel_scope.cancel()
        deadline = time.monotonic() + 1
        while server.observed.cancelled_count < 20 and time.monotonic() < deadline:  # noqa: ASYNC110
            await anyio.sleep(0.01)
        assert server.observed.cancelled_count == 20


async def test_unknown_method_is_unimplemented(server: ServerThread) -> None:
    request = GetSandboxRequest(sandbox_id="sb_1")
    async with await open_transport(server.endpoint) as transport:
        with pytest.raises(SandboxError) as caught:
            await transport.unary("/sandbox.v1.SandboxService/Nope", request, Sandbox)
    assert caught.value.code == 12


async def test_closed_transport_refuses_calls(server: ServerThread) -> None:
    transport = await open_transport(server.endpoint)
    await transport.aclose()
    await transport.aclose()
    with pytest.raises(ConnectionError, match="closed"):
        await get(transport, "sb_1")


async def test_tls_over_unix_socket_is_invalid() -> None:
    with pytest.raises(InvalidConfigurationError, match="unix socket"):
        await open_transport("unix:/tmp/x.sock", tls=TLSConfig())


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_wait_for_cancels_the_handler(server: ServerThread) -> None:
    async with await open_transport(server.endpoint) as transport:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(get(transport, "hang"), 0.3)
        assert await eventually(server.observed.cancelled, within=1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_task_cancel_cancels_the_handler(server: ServerThread) -> None:
    async with await open_transport(server.endpoint) as transport:
        task = asyncio.ensure_future(get(transport, "hang"))
        assert await eventually(server.observed.started, within=2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await eventually(server.observed.cancelled, within=1)


def _upload(total: int, chunk_size: int, libraries: list[str]) -> AsyncIterator[UploadChunk]:
    async def produce() -> AsyncIterator[UploadChunk]:
        libraries.append(sniffio.current_async_library())
        metadata = UploadChunkMetadata(codebase_id="cb_1", file_path="big.bin", total_size=total)
        yield UploadChunk(metadata=metadata)
        for offset in range(0, total, chunk_size):
            await anyio.lowlevel.checkpoint()  # anyio works where the producer runs
            yield UploadChunk(data=b"x" * min(chunk_size, total - offset))

    return produce()


async def test_client_stream_uploads_10_mb(server: ServerThread) -> None:
    total, chunk_size = 10 * 1024 * 1024, 64 * 1024
    libraries: list[str] = []
    async with await open_transport(server.endpoint) as transport:
        result = await transport.client_stream(
            UPLOAD_FILES, lambda: _upload(total, chunk_size, libraries), UploadResult
        )
    assert (result.file_path, result.size) == ("big.bin", total)
    assert server.observed.upload_chunks == total // chunk_size
    assert libraries == ["asyncio"]


async def test_client_stream_producer_error_propagates_and_cancels(server: ServerThread) -> None:
    async def produce() -> AsyncIterator[UploadChunk]:
        yield UploadChunk(metadata=UploadChunkMetadata(file_path="f"))
        yield UploadChunk(data=b"abc")
        while server.observed.upload_chunks == 0:  # noqa: ASYNC110 - set by a thread
            await anyio.sleep(0.01)
        raise OSError("disk on fire")

    async with await open_transport(server.endpoint) as transport:
        with pytest.raises(OSError, match="disk on fire") as caught:
            await transport.client_stream(UPLOAD_FILES, produce, UploadResult)
        assert not isinstance(caught.value, ConnectionError)
        assert await eventually(server.observed.cancelled, within=1)


async def test_concurrent_calls_run_concurrently_without_more_threads(
    server: ServerThread,
) -> None:
    async with await open_transport(server.endpoint) as transport:
        await get(transport, "warm-up")
        threads_before = threading.active_count()
        results: list[str] = []

        async def one(i: int) -> None:
            results.append((await get(transport, f"slow-{i}")).id)

        async with anyio.create_task_group() as group:
            for i in range(50):
                group.start_soon(one, i)
    assert sorted(results) == sorted(f"slow-{i}" for i in range(50))
    # All 50 were in flight at once (none waited for another), and no thread was added for
    # them (idle worker threads of earlier tests may only have gone away meanwhile).
    assert server.observed.max_in_flight == 50
    assert server.observed.max_threads <= threads_before
    assert threading.active_count() <= threads_before


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_transports_share_one_loop_thread(server: ServerThread) -> None:
    async with await open_transport(server.endpoint) as first:
        await get(first, "warm-up")
        threads_before = threading.active_count()
        for i in range(5):
            async with await open_transport(server.endpoint) as transport:
                await get(transport, f"sb_{i}")
        assert threading.active_count() == threads_before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:9000", Endpoint("localhost:9000", host="localhost", port=9000)),
        ("[::1]:9000", Endpoint("[::1]:9000", host="::1", port=9000)),
        ("unix:/run/af.sock", Endpoint("unix:/run/af.sock", path="/run/af.sock")),
        ("unix:///run/af.sock", Endpoint("unix:///run/af.sock", path="/run/af.sock")),
    ],
)
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost",
        "localhost:",
        ":9000",
        "host:99999",
        "host:x",
        "::1:9000",
        "[::1]9000",
        "http://localhost:9000",
        "unix:",
        "unix://relative.sock",
        "local host:9000",
    ],
)
async def test_invalid_endpoint_is_invalid_configuration(text: str) -> None:
    with pytest.raises(InvalidConfigurationError, match="endpoint"):
        await open_transport(text)
