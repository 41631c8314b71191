"""A sandbox file write is all or nothing: a stream broken off, shorter or longer than it
announced leaves the file as it was (and nothing else behind); a whole one replaces it."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandbox, AsyncSandboxClient, InvalidConfigurationError
from agentfense._proto.sandbox import v1 as pb

pytestmark = pytest.mark.anyio

_WRITE = "/sandbox.v1.SandboxService/WriteSandboxFile"
OLD = b"the old content\n" * 1000
PIECE = b"n" * 65536

Chunks = Callable[[], AsyncIterator[pb.SandboxFileChunk]]


def _chunks(sandbox_id: str, path: str, total: int, pieces: int, *, hang: bool) -> Chunks:
    async def chunks() -> AsyncIterator[pb.SandboxFileChunk]:
        meta = pb.SandboxFileChunkMetadata(sandbox_id=sandbox_id, path=path, total_size=total)
        yield pb.SandboxFileChunk(metadata=meta)
        for _ in range(pieces):
            yield pb.SandboxFileChunk(data=PIECE)
        if hang:
            await anyio.sleep_forever()

    return chunks


async def _send(client: AsyncSandboxClient, chunks: Chunks) -> object:
    transport = await client._channel()
    return await transport.client_stream(_WRITE, chunks, pb.UploadResult)


async def _unchanged(sandbox: AsyncSandbox, client: AsyncSandboxClient) -> None:
    assert await sandbox.read_file_bytes("notes/a.txt") == OLD
    assert await client.download_file(sandbox.codebase_id, "notes/a.txt") == OLD
    names = {f.name for f in await sandbox.list_files("/workspace/notes")}
    assert names == {"a.txt"}, names  # no temporary left behind


@pytest.mark.parametrize("preset", ["development", "exact-file"])
async def test_a_broken_off_or_short_write_leaves_the_file_as_it_was(
    endpoint: str, project: Path, preset: str
) -> None:
    (project / "notes").mkdir()
    (project / "notes" / "a.txt").write_bytes(OLD)
    # "exact-file": the only writable name is the target itself (no temporary beside it).
    permissions = (
        [
            {"pattern": "**", "permission": "read"},
            {"pattern": "notes/a.txt", "type": "file", "permission": "write"},
        ]
        if preset == "exact-file"
        else None
    )
    async with (
        await AsyncSandbox.from_local(
            project,
            preset="development" if permissions is None else "view-only",
            permissions=permissions,
            endpoint=endpoint,
        ) as sandbox,
        AsyncSandboxClient(endpoint) as client,
    ):
        path = "/workspace/notes/a.txt"
        # A client that breaks off mid-stream (its call cancelled).
        with anyio.move_on_after(2) as scope:
            await _send(client, _chunks(sandbox.id, path, 10 * len(PIECE), 3, hang=True))
        assert scope.cancelled_caught
        await anyio.sleep(0.5)  # the server sees the reset
        await _unchanged(sandbox, client)
        # One that ends the stream with fewer bytes than it announced.
        with pytest.raises(InvalidConfigurationError, match="total_size"):
            await _send(client, _chunks(sandbox.id, path, 10 * len(PIECE), 3, hang=False))
        await _unchanged(sandbox, client)
        # One that sends more than it announced, and one that announces a negative size.
        with pytest.raises(InvalidConfigurationError, match="total_size"):
            await _send(client, _chunks(sandbox.id, path, len(PIECE), 3, hang=False))
        with pytest.raises(InvalidConfigurationError, match="total_size"):
            await _send(client, _chunks(sandbox.id, path, -5, 1, hang=False))
        await _unchanged(sandbox, client)
        # A whole write replaces the file, keeping its mode.
        await sandbox.run("chmod 755 notes/a.txt")
        result = await _send(client, _chunks(sandbox.id, path, 2 * len(PIECE), 2, hang=False))
        assert isinstance(result, pb.UploadResult)
        assert result.size == 2 * len(PIECE)
        assert await sandbox.read_file_bytes("notes/a.txt") == PIECE * 2
        assert await client.download_file(sandbox.codebase_id, "notes/a.txt") == PIECE * 2
        assert (await sandbox.run("stat -c %a notes/a.txt")).stdout.strip() == "755"
        assert {f.name for f in await sandbox.list_files("/workspace/notes")} == {"a.txt"}


async def test_a_write_in_flight_never_reaches_the_codebase_nor_holds_up_commits(
    client: AsyncSandboxClient, endpoint: str, project: Path
) -> None:
    """A command of the sandbox that ends while a write is still coming commits at once (the
    client does not hold the commit hostage), and what it commits holds nothing of the write:
    no partial temporary file (it used to be made in the view, where a commit took it)."""
    async with await AsyncSandbox.from_local(
        project, endpoint=endpoint, preset="development"
    ) as sandbox:
        codebase_id = (await sandbox.refresh()).codebase_id
        # (Not an anyio.Event: under trio, the transport runs this generator on its asyncio
        # loop thread.)
        release = threading.Event()

        async def chunks() -> AsyncIterator[pb.SandboxFileChunk]:
            meta = pb.SandboxFileChunkMetadata(
                sandbox_id=sandbox.id, path="/workspace/report.txt", total_size=200
            )
            yield pb.SandboxFileChunk(metadata=meta)
            yield pb.SandboxFileChunk(data=b"A" * 100)
            await anyio.to_thread.run_sync(release.wait)
            yield pb.SandboxFileChunk(data=b"B" * 100)

        async with anyio.create_task_group() as tg:
            tg.start_soon(_send, client, chunks)
            try:
                await anyio.sleep(1)  # the first half is on the server
                with anyio.fail_after(20):
                    await sandbox.run("echo ran > /workspace/ran.txt")  # ends: it commits
                names = [info.path for info in await client.list_files(codebase_id, recursive=True)]
            finally:
                release.set()
        assert "ran.txt" in names
        assert not [name for name in names if ".agentfense-" in name or "report" in name], names
        assert await client.download_file(codebase_id, "report.txt") == b"A" * 100 + b"B" * 100
