"""Cancelling an SDK call cancels the remote work, on asyncio and on trio.

However the caller is cancelled (a trio or anyio cancel scope, a timeout, ``asyncio.wait_for``,
``task.cancel()``), the RPC is cancelled and the server kills the command within a second;
the sandbox, and a session with its state, stay usable. A cancelled upload leaves no partial
file behind, and ``from_local`` cancelled mid-upload deletes the codebase it created.

A command is ``sleep 1000.<random>``: the unique duration marks its processes in the host's
``/proc`` (the tests run beside the server, as root), and it never ends on its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import betterproto
import pytest
import trio

from agentfense import AsyncSandbox, AsyncSandboxClient, OutputChunk, RuntimeType, SandboxStatus
from agentfense._proto.sandbox import v1 as pb

from ._procs import host_processes
from .conftest import MAX_UPLOAD

pytestmark = pytest.mark.anyio

Call = Callable[[], Coroutine[Any, Any, object]]
Condition = Callable[[], Awaitable[bool]]

# A timeout fires this long after the call began; the command is running well before then.
TIMEOUT = 0.5
POLL = 0.01

# (backend, mechanism): every way a caller is cancelled, on the backends that have it.
MECHANISMS = [
    pytest.param("trio", "trio.move_on_after", id="trio-trio.move_on_after"),
    pytest.param("trio", "trio.CancelScope.cancel", id="trio-trio.CancelScope.cancel"),
    pytest.param("trio", "anyio.move_on_after", id="trio-anyio.move_on_after"),
    pytest.param("trio", "anyio.CancelScope.cancel", id="trio-anyio.CancelScope.cancel"),
    pytest.param("asyncio", "anyio.move_on_after", id="asyncio-anyio.move_on_after"),
    pytest.param("asyncio", "anyio.CancelScope.cancel", id="asyncio-anyio.CancelScope.cancel"),
    pytest.param("asyncio", "asyncio.wait_for", id="asyncio-asyncio.wait_for"),
    pytest.param("asyncio", "task.cancel", id="asyncio-task.cancel"),
]
TIMEOUTS = {"trio.move_on_after", "anyio.move_on_after", "asyncio.wait_for"}
# The mechanisms that cancel at a moment the test chooses (mid-upload, say).
EXPLICIT = [p for p in MECHANISMS if p.values[1] not in TIMEOUTS]
TIMED = [p for p in MECHANISMS if p.values[1] in TIMEOUTS]

by_mechanism = pytest.mark.parametrize(("anyio_backend", "mechanism"), MECHANISMS)


# -- cancelling, each way ---------------------------------------------------------------------


async def _until(
    condition: Condition, call: asyncio.Task[object] | None = None, poll: float = POLL
) -> None:
    """Wait until ``condition()`` holds; fail if ``call`` ends first or it takes 10 s."""
    with anyio.fail_after(10):
        while not await condition():
            if call is not None and call.done():
                await call  # its error, if it failed
                pytest.fail("the call ended before it could be cancelled")
            await anyio.sleep(poll)


async def _cancel(mechanism: str, call: Call, started: Condition) -> None:
    """Run ``call()`` and cancel it the ``mechanism`` way once ``started()`` holds (a timeout
    fires TIMEOUT after the call began, and ``started()`` must hold by then). Returns once
    the cancellation has reached the caller; fails if the call ended in any other way."""
    if mechanism in TIMEOUTS:
        await _time_out(mechanism, call, started)
    elif mechanism == "task.cancel":
        task = asyncio.get_running_loop().create_task(call())
        await _until(started, task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        scope = trio.CancelScope() if mechanism.startswith("trio.") else anyio.CancelScope()

        async def cancel_when_started() -> None:
            await _until(started)
            scope.cancel()

        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_started)
                await call()
            pytest.fail("the call ended before it was cancelled")
        assert scope.cancelled_caught


async def _time_out(mechanism: str, call: Call, started: Condition) -> None:
    seen = anyio.Event()

    async def watch() -> None:
        await _until(started)
        seen.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        if mechanism == "asyncio.wait_for":
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(call(), TIMEOUT)
        else:
            timeout = trio.move_on_after if mechanism.startswith("trio.") else anyio.move_on_after
            with timeout(TIMEOUT) as scope:
                await call()
            assert scope.cancelled_caught, "the call ended before its timeout"
        assert seen.is_set(), "the remote work had not started when the timeout fired"


# -- the remote command -----------------------------------------------------------------------


def _marker() -> str:
    return f"1000.{uuid.uuid4().int % 10**9}"


def _running(marker: str) -> Condition:
    async def running() -> bool:
        return bool(host_processes(marker))

    return running


async def _gone_within_a_second(marker: str) -> None:
    deadline = time.monotonic() + 1.0
    while left := host_processes(marker):
        if time.monotonic() > deadline:
            pytest.fail(f"still running a second after the caller was cancelled: {left}")
        await anyio.sleep(POLL)


def _streamed(open_stream: Callable[[], Any], marker: str) -> tuple[Call, Condition]:
    """A call that iterates an exec stream, and the condition that it is iterating (its
    first chunk came) while the command runs."""
    chunks: list[OutputChunk] = []

    async def call() -> None:
        async with open_stream() as stream:
            async for chunk in stream:
                chunks.append(chunk)

    async def iterating() -> bool:
        return bool(chunks) and bool(host_processes(marker))

    return call, iterating


@pytest.fixture
async def sandbox(endpoint: str, project: Path) -> AsyncIterator[AsyncSandbox]:
    async with await AsyncSandbox.from_local(
        project, preset="full-access", endpoint=endpoint
    ) as created:
        yield created


# -- commands ---------------------------------------------------------------------------------


@by_mechanism
@pytest.mark.parametrize("method", ["run", "exec", "exec_stream"])
async def test_cancelling_a_sandbox_command_kills_it(
    sandbox: AsyncSandbox, mechanism: str, method: str
) -> None:
    marker = _marker()
    call: Call
    if method == "exec_stream":
        call, started = _streamed(
            lambda: sandbox.exec_stream(f"echo started; sleep {marker}"), marker
        )
    else:
        run = sandbox.run if method == "run" else sandbox.exec
        call, started = (lambda: run(f"sleep {marker}")), _running(marker)
    await _cancel(mechanism, call, started)
    await _gone_within_a_second(marker)
    assert (await sandbox.run("echo still usable")).stdout == "still usable\n"


async def test_a_cancellation_as_the_command_starts_kills_it(sandbox: AsyncSandbox) -> None:
    """Cancelled the moment its process appears, while the server may still be waiting for
    the sandbox to report the start: the command is killed all the same."""
    for _ in range(20):
        marker = _marker()
        with anyio.CancelScope() as scope:

            async def cancel_on_sight(marker: str = marker) -> None:
                await _until(_running(marker), poll=0.0005)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_on_sight)
                await sandbox.run(f"sleep {marker}")
        assert scope.cancelled_caught
        await _gone_within_a_second(marker)
    assert (await sandbox.run("echo still usable")).stdout == "still usable\n"


@by_mechanism
async def test_cancelling_a_client_exec_kills_it(
    client: AsyncSandboxClient, sandbox: AsyncSandbox, mechanism: str
) -> None:
    marker = _marker()
    await _cancel(mechanism, lambda: client.exec(sandbox.id, f"sleep {marker}"), _running(marker))
    await _gone_within_a_second(marker)
    assert (await client.exec(sandbox.id, "echo still usable")).stdout == "still usable\n"
    assert (await client.get_sandbox(sandbox.id)).status is SandboxStatus.RUNNING


@by_mechanism
@pytest.mark.parametrize("method", ["exec", "exec_stream"])
async def test_cancelling_a_session_command_kills_it_and_keeps_the_session(
    sandbox: AsyncSandbox, mechanism: str, method: str
) -> None:
    marker = _marker()
    async with sandbox.session() as session:
        await session.exec("export KEPT=kept; cd /workspace/src")
        call: Call
        if method == "exec_stream":
            call, started = _streamed(
                lambda: session.exec_stream(f"echo started; sleep {marker}"), marker
            )
        else:
            call, started = (lambda: session.exec(f"sleep {marker}")), _running(marker)
        await _cancel(mechanism, call, started)
        await _gone_within_a_second(marker)
        result = await session.exec("echo $KEPT; pwd")
        assert (result.stdout, result.exit_code) == ("kept\n/workspace/src\n", 0)
    assert (await sandbox.run("echo still usable")).stdout == "still usable\n"


# -- uploads ----------------------------------------------------------------------------------


async def _time_out_after(mechanism: str, delay: float, call: Call) -> None:
    """Run ``call()`` under a timeout of ``delay``; it may or may not finish in time."""
    if mechanism == "asyncio.wait_for":
        with suppress(TimeoutError):
            await asyncio.wait_for(call(), delay)
    else:
        timeout = trio.move_on_after if mechanism.startswith("trio.") else anyio.move_on_after
        with timeout(delay):
            await call()


@pytest.mark.parametrize(("anyio_backend", "mechanism"), TIMED)
async def test_a_cancelled_upload_leaves_no_partial_file(
    client: AsyncSandboxClient, mechanism: str
) -> None:
    size = MAX_UPLOAD - 1  # one upload takes some tens of milliseconds
    codebase = await client.create_codebase("cancelled-upload")
    try:
        await client.upload_file(codebase.id, "big.bin", bytes([0]) * size)
        stopped = 0
        # Cancelled at different moments of the transfer: the file is always one upload's
        # content, whole (the one before, or this one if it was complete), never a part.
        for attempt, delay in enumerate((0.001, 0.003, 0.006, 0.01, 0.015), start=1):
            content = bytes([attempt]) * size
            upload = partial(client.upload_file, codebase.id, "big.bin", content)
            await _time_out_after(mechanism, delay, upload)
            await anyio.sleep(0.05)  # time enough to finish, were it still going on
            data = await client.download_file(codebase.id, "big.bin")
            assert len(data) == size, f"a cancelled upload left {len(data)} of {size} bytes"
            assert data.count(data[:1]) == size, "a cancelled upload left a mixed file"
            stopped += data[0] != attempt
        assert stopped, "no cancellation stopped an upload"
        files = await client.list_files(codebase.id, recursive=True)
        assert [(f.path, f.size) for f in files] == [("big.bin", size)]
        # The server is fine: a new upload works.
        await client.upload_file(codebase.id, "big.bin", b"after")
        assert await client.download_file(codebase.id, "big.bin") == b"after"
    finally:
        with anyio.CancelScope(shield=True):
            await client.delete_codebase(codebase.id)


FILES = 12
FILE_SIZE = 2 * 1024 * 1024


def _big_project(root: Path) -> list[tuple[str, Path]]:
    """FILES files of FILE_SIZE bytes each (file i all bytes i): ~10 ms each to upload."""
    root.mkdir()
    files = []
    for i in range(FILES):
        local = root / f"f{i:02}.bin"
        local.write_bytes(bytes([i]) * FILE_SIZE)
        files.append((local.name, local))
    return files


@pytest.mark.parametrize(("anyio_backend", "mechanism"), EXPLICIT)
async def test_a_cancelled_archive_upload_keeps_only_whole_files(
    client: AsyncSandboxClient, tmp_path: Path, mechanism: str
) -> None:
    files = _big_project(tmp_path / "big")
    codebase = await client.create_codebase("cancelled-archive")
    try:

        async def some_arrived() -> bool:
            return bool(await client.list_files(codebase.id))

        await _cancel(mechanism, lambda: client.upload_archive(codebase.id, files), some_arrived)
        await anyio.sleep(0.3)  # time enough to finish, were it still going on
        arrived = await client.list_files(codebase.id, recursive=True)
        assert 0 < len(arrived) < FILES, "the upload went on after it was cancelled"
        for info in arrived:
            assert info.size == FILE_SIZE, f"{info.path} is partial"
            data = await client.download_file(codebase.id, info.path)
            assert data == bytes([int(info.path[1:3])]) * FILE_SIZE
        # The server is fine: a new upload works.
        assert len(await client.upload_archive(codebase.id, files)) == FILES
        assert len(await client.list_files(codebase.id)) == FILES
    finally:
        with anyio.CancelScope(shield=True):
            await client.delete_codebase(codebase.id)


@pytest.mark.parametrize(("anyio_backend", "mechanism"), EXPLICIT)
async def test_a_cancelled_upload_lets_its_producer_finish_shielded_work(
    client: AsyncSandboxClient, mechanism: str
) -> None:
    """What the uploads rely on to close the files they open: however the call is cancelled,
    its producer sees an anyio cancellation, so a thread it waits for (opening a file) is
    waited for and its clean-up runs, all before the cancellation returns."""
    entered, release = threading.Event(), threading.Event()
    log: list[str] = []
    codebase = await client.create_codebase("cancelled-producer")

    def blocking() -> None:
        entered.set()
        release.wait(10)
        log.append("thread done")

    async def produce() -> AsyncIterator[betterproto.Message]:
        yield pb.ArchiveChunk(codebase_id=codebase.id)
        try:
            await anyio.to_thread.run_sync(blocking)
            await anyio.sleep(10)
        finally:
            log.append("cleaned up")

    async def in_thread() -> bool:
        if entered.is_set():
            threading.Timer(0.2, release.set).start()
        return entered.is_set()

    transport = await client._channel()
    try:
        await _cancel(
            mechanism,
            lambda: transport.client_stream(
                "/sandbox.v1.CodebaseService/UploadArchive", produce, pb.ArchiveResult
            ),
            in_thread,
        )
        assert log == ["thread done", "cleaned up"]
    finally:
        release.set()
        with anyio.CancelScope(shield=True):
            await client.delete_codebase(codebase.id)


@pytest.mark.parametrize(("anyio_backend", "mechanism"), EXPLICIT)
async def test_from_local_cancelled_mid_upload_leaves_nothing_behind(
    client: AsyncSandboxClient, endpoint: str, tmp_path: Path, mechanism: str
) -> None:
    _big_project(tmp_path / "big")
    name = f"cancelled-{uuid.uuid4().hex}"

    async def create() -> None:
        sandbox = await AsyncSandbox.from_local(
            tmp_path / "big", endpoint=endpoint, codebase_name=name
        )
        await sandbox.destroy()

    async def uploading() -> bool:
        return any(c.name == name and c.file_count > 0 for c in await client.list_codebases())

    await _cancel(mechanism, create, uploading)
    assert name not in {c.name for c in await client.list_codebases()}
    # The server is fine: the same project uploads whole.
    async with await AsyncSandbox.from_local(
        tmp_path / "big", endpoint=endpoint, codebase_name=name
    ) as sandbox:
        assert (await sandbox.run("ls | wc -l")).stdout == f"{FILES}\n"
    assert name not in {c.name for c in await client.list_codebases()}


@pytest.mark.parametrize(("anyio_backend", "mechanism"), EXPLICIT)
@pytest.mark.parametrize("factory", ["from_codebase", "from_local"])
async def test_a_factory_cancelled_as_its_sandbox_starts_leaves_nothing_behind(
    client: AsyncSandboxClient, endpoint: str, project: Path, mechanism: str, factory: str
) -> None:
    """Cancelled while the server creates and starts the sandbox (a container: a start
    long enough to be caught), the factory destroys it (and from_local its codebase) before
    the cancellation reaches the caller: nothing is left running that no one holds."""
    name = f"cancelled-start-{uuid.uuid4().hex}"
    mine = await client.create_codebase(name)
    docker, image = RuntimeType.DOCKER, "agentfense/busybox:latest"

    async def create() -> AsyncSandbox:  # (the factory's own coroutine: task.cancel's task)
        if factory == "from_codebase":
            return await AsyncSandbox.from_codebase(
                mine.id, endpoint=endpoint, runtime=docker, image=image
            )
        return await AsyncSandbox.from_local(
            project, endpoint=endpoint, codebase_name=name, runtime=docker, image=image
        )

    async def codebases() -> list[str]:
        return [c.id for c in await client.list_codebases() if c.name == name]

    async def starting() -> bool:
        for codebase_id in await codebases():
            if await client.list_sandboxes(codebase_id):
                return True
        return False

    try:
        await _cancel(mechanism, create, starting)
        for codebase_id in await codebases():
            assert await client.list_sandboxes(codebase_id) == []
        assert await codebases() == [mine.id]  # (from_local's own: deleted)
    finally:
        with anyio.CancelScope(shield=True):
            for codebase_id in await codebases():
                for info in await client.list_sandboxes(codebase_id):
                    await client.destroy_sandbox(info.id)
                await client.delete_codebase(codebase_id)
