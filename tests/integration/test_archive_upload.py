"""UploadArchive: many files in one stream, as from_local sends them."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentfense import AsyncSandboxClient, CodebaseNotFoundError, InvalidConfigurationError
from agentfense._proto.sandbox import v1 as pb

pytestmark = pytest.mark.anyio


async def test_an_archive_uploads_every_file_whole(
    client: AsyncSandboxClient, tmp_path: Path
) -> None:
    contents = {
        "empty.txt": b"",
        "a/b/c/deep.py": b"print('deep')\n",
        "big.bin": bytes(range(256)) * 2000,  # several chunks
        "name with spaces.md": "ünïcode\n".encode(),
    }
    files = []
    for rel, data in contents.items():
        local = tmp_path / "src" / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        files.append((rel, local))
    codebase = await client.create_codebase("archive")
    try:
        results = await client.upload_archive(codebase.id, files)
        assert [(r.file_path, r.size) for r in results] == [
            (rel, len(data)) for rel, data in contents.items()
        ]
        for result in results:
            assert result.checksum == hashlib.sha256(contents[result.file_path]).hexdigest()
        for rel, data in contents.items():
            assert await client.download_file(codebase.id, rel) == data
        info = await client.get_codebase(codebase.id)
        assert (info.file_count, info.size) == (4, sum(map(len, contents.values())))
    finally:
        await client.delete_codebase(codebase.id)


async def _raw(client: AsyncSandboxClient, messages: list[pb.ArchiveChunk]) -> object:
    async def produce() -> AsyncIterator[pb.ArchiveChunk]:
        for message in messages:
            yield message

    transport = await client._channel()
    return await transport.client_stream(
        "/sandbox.v1.CodebaseService/UploadArchive", produce, pb.ArchiveResult
    )


async def test_bad_archives_are_refused(client: AsyncSandboxClient) -> None:
    codebase = await client.create_codebase("bad-archive")
    try:
        header = pb.ArchiveChunk(file=pb.ArchiveChunkFile(file_path="a.txt", size=3))
        cases: list[tuple[list[pb.ArchiveChunk], str]] = [
            ([header], "codebase_id"),  # no codebase id first
            ([pb.ArchiveChunk(codebase_id=codebase.id), pb.ArchiveChunk(data=b"x")], "header"),
            ([pb.ArchiveChunk(codebase_id=codebase.id), header], "missing"),  # truncated
            (
                [
                    pb.ArchiveChunk(codebase_id=codebase.id),
                    header,
                    pb.ArchiveChunk(data=b"four"),
                ],
                "more data",
            ),
            (
                [
                    pb.ArchiveChunk(codebase_id=codebase.id),
                    pb.ArchiveChunk(file=pb.ArchiveChunkFile(file_path="../x", size=1)),
                    pb.ArchiveChunk(data=b"x"),
                ],
                "..",
            ),
        ]
        for messages, words in cases:
            with pytest.raises(InvalidConfigurationError, match=words) as refused:
                await _raw(client, messages)
            assert refused.value.code == 3
        assert await client.list_files(codebase.id, recursive=True) == []
        with pytest.raises(CodebaseNotFoundError):
            await _raw(client, [pb.ArchiveChunk(codebase_id="cb_0000000000000000"), header])
    finally:
        await client.delete_codebase(codebase.id)
