"""Nothing a sandbox or a client does stops the server: a sandbox whose destroy fails is
marked and tried again while the others go on; a second server on the same state directory
is refused before it touches anything."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandboxClient,
    ResourceLimitExceededError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStatus,
)
from agentfense._proto.sandbox import v1 as pb
from agentfense.fs._host import remove_tree
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

WRITE = [{"pattern": "**", "permission": "write"}]
_WRITE = "/sandbox.v1.SandboxService/WriteSandboxFile"


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server_process(tmp_path / "own", settings={"expiry_check_interval": "0.2"})
    yield running
    assert running.stop() == 0, running.log()


def _immutable(path: Path, on: bool) -> None:
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


async def _exists(client: AsyncSandboxClient, sandbox_id: str) -> bool:
    try:
        await client.get_sandbox(sandbox_id)
    except SandboxNotFoundError:
        return False
    return True


async def test_a_failing_destroy_of_an_expired_sandbox_never_stops_the_server(
    own_server: ServerProcess,
) -> None:
    async with AsyncSandboxClient(own_server.endpoint) as client:
        other_codebase = await client.create_codebase("other")
        other = await client.start_sandbox(
            (await client.create_sandbox(other_codebase.id, permissions=WRITE)).id
        )
        codebase = await client.create_codebase("doomed")
        await client.upload_file(codebase.id, "keep.txt", b"keep\n")
        doomed = await client.create_sandbox(codebase.id, permissions=WRITE, expires_in=4)
        await client.start_sandbox(doomed.id)
        delta = own_server.state_dir / "deltas" / doomed.id
        _immutable(delta, True)  # its commits fail (EPERM, even for root)
        try:
            with pytest.raises(SandboxError, match="commit"):
                await client.exec(doomed.id, "rm keep.txt; echo late > late.txt")
            with anyio.fail_after(20):
                while (await client.get_sandbox(doomed.id)).status is not SandboxStatus.ERROR:  # noqa: ASYNC110 - the server's state
                    await anyio.sleep(0.2)
            # The server still serves the others, and new sandboxes.
            assert (await client.exec(other.id, "echo alive")).stdout == "alive\n"
            fresh = await client.create_sandbox(other_codebase.id, permissions=WRITE)
            await client.start_sandbox(fresh.id)
            assert (await client.exec(fresh.id, "echo fresh > f; cat f")).stdout == "fresh\n"
            await anyio.sleep(1)
            assert (await client.get_sandbox(doomed.id)).status is SandboxStatus.ERROR
        finally:
            _immutable(delta, False)
        # Tried again: once it can be, destroyed, and what it wrote is not lost.
        with anyio.fail_after(30):
            while await _exists(client, doomed.id):  # noqa: ASYNC110 - the server's state
                await anyio.sleep(0.2)
        assert await client.download_file(codebase.id, "late.txt") == b"late\n"
        assert [f.path for f in await client.list_files(codebase.id)] == ["late.txt"]
        assert (await client.exec(other.id, "echo still")).stdout == "still\n"
    assert own_server.process.poll() is None
    assert "could not be destroyed" in own_server.log()


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        return [line for line in mounts if f" {path}/" in line]


def _serve_again(listen: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFENSE_")}
    return subprocess.run(
        [sys.executable, "-m", "agentfense", "serve", "--listen", listen],
        env={**env, "AGENTFENSE_STATE_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_second_server_on_the_same_state_directory_is_refused_and_touches_nothing(
    own_server: ServerProcess, tmp_path: Path
) -> None:
    async with AsyncSandboxClient(own_server.endpoint) as client:
        codebase = await client.create_codebase("first")
        await client.upload_file(codebase.id, "a.txt", b"a\n")
        sandbox = await client.start_sandbox(
            (await client.create_sandbox(codebase.id, permissions=WRITE)).id
        )
        mounts_before = _mounts_under(own_server.state_dir)
        # On the same socket (which it would have taken over) and on another one.
        for listen in (own_server.endpoint, f"unix:{tmp_path}/second.sock"):
            second = _serve_again(listen, own_server.state_dir)
            assert second.returncode != 0
            lines = second.stderr.strip().splitlines()
            assert lines == [
                f"agentfense serve: state_dir {own_server.state_dir} is in use by another "
                f"agentfense server (pid {own_server.process.pid}); stop it first or choose "
                "another state_dir"
            ], second.stderr
        assert _mounts_under(own_server.state_dir) == mounts_before
        assert not (tmp_path / "second.sock").exists()
        # The first server's sandboxes go on: their view, their processes, their commits.
        result = await client.exec(sandbox.id, "cat a.txt; echo b > b.txt")
        assert result.stdout == "a\n"
        assert await client.download_file(codebase.id, "b.txt") == b"b\n"
        await client.write_sandbox_file(sandbox.id, "c.txt", "c\n")
        assert await client.read_sandbox_file(sandbox.id, "/workspace/c.txt") == b"c\n"
    assert own_server.process.poll() is None


def test_a_busy_socket_is_refused_with_one_line(own_server: ServerProcess) -> None:
    state = Path(tempfile.mkdtemp(prefix="agentfense-second-"))
    try:
        second = _serve_again(own_server.endpoint, state)
    finally:
        remove_tree(state)
    assert second.returncode != 0
    assert second.stderr.strip().splitlines() == [
        f"agentfense serve: cannot listen on {own_server.endpoint}: a server already listens there"
    ], second.stderr
    assert own_server.socket_path.exists()


async def test_a_request_message_over_the_limit_is_refused_before_it_is_buffered(
    own_server: ServerProcess,
) -> None:
    limit = 4 * 1024 * 1024  # max_message_bytes' default
    async with AsyncSandboxClient(own_server.endpoint) as client:
        codebase = await client.create_codebase("big")
        sandbox = await client.start_sandbox(
            (await client.create_sandbox(codebase.id, permissions=WRITE)).id
        )
        with pytest.raises(ResourceLimitExceededError, match="max_message_bytes") as caught:
            await client.exec(sandbox.id, "wc -c", stdin="x" * (limit + 1))
        assert caught.value.code == 8
        assert str(limit) in caught.value.message
        # One message of a stream over the limit, the same.
        transport = await client._channel()

        async def one_big_chunk() -> AsyncIterator[pb.SandboxFileChunk]:
            meta = pb.SandboxFileChunkMetadata(sandbox_id=sandbox.id, path="big.bin")
            yield pb.SandboxFileChunk(metadata=meta)
            yield pb.SandboxFileChunk(data=b"b" * (limit + 1))

        with pytest.raises(ResourceLimitExceededError, match="max_message_bytes"):
            await transport.client_stream(_WRITE, one_big_chunk, pb.UploadResult)
        # The connection goes on; what fits is taken, and large files stream in chunks.
        result = await client.exec(sandbox.id, "wc -c", stdin="x" * (limit // 2))
        assert result.stdout.strip() == str(limit // 2)
        big = bytes(range(256)) * (3 * limit // 256)
        await client.write_sandbox_file(sandbox.id, "big.bin", big)
        assert await client.read_sandbox_file(sandbox.id, "big.bin") == big
        await client.upload_file(codebase.id, "up.bin", big)
        assert await client.download_file(codebase.id, "up.bin") == big
