"""A hostile tenant against its quotas (issue 12), over a real server: calls fired at once,
each of which alone fits, must not together go beyond a quota (every create awaits before
what it makes is counted), and one upload must not make more entries than the quota allows
(the directories of its path count too). Tokens made by the CLI; raw calls where the SDK
would not send what a hostile client does (an upload of undeclared size)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator

import anyio
import pytest

from agentfense import AsyncSandboxClient, ResourceLimitExceededError
from agentfense._proto.sandbox import v1 as pb
from agentfense.testing import ServerProcess, start_server_process

from ._callers import every_rpc, raw_call, token

pytestmark = pytest.mark.anyio
KiB = 1024
AT_ONCE = 8


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (grpclib's own channel, to send what any client may send)


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("quota-races")
    config = root / "server.toml"
    config.write_text(
        "[server]\n"
        "quota_codebases = 2\n"
        "quota_sandboxes = 2\n"
        "quota_sessions = 1\n"
        f"quota_codebase_bytes = {64 * KiB}\n"
        "quota_codebase_entries = 12\n"
        "max_sessions_per_sandbox = 2\n"
        "[server.quotas.roomy]\n"  # (only the per-sandbox maximum holds it)
        "sessions = 100\n"
    )
    running = start_server_process(root, settings={"config": str(config)})
    yield running
    assert running.stop() == 0, running.log()


async def _at_once(call: Callable[[int], Awaitable[object]]) -> tuple[list[object], int]:
    """``call(0..AT_ONCE-1)`` all at once: what succeeded, and how many were refused for a
    quota (any other error fails the test)."""
    made: list[object] = []
    refused = 0

    async def one(index: int) -> None:
        nonlocal refused
        try:
            made.append(await call(index))
        except ResourceLimitExceededError:
            refused += 1

    async with anyio.create_task_group() as tg:
        for index in range(AT_ONCE):
            tg.start_soon(one, index)
    return made, refused


async def test_creates_at_once_hold_to_the_codebase_and_sandbox_quotas(
    quota_server: ServerProcess,
) -> None:
    async with AsyncSandboxClient(
        quota_server.endpoint, api_key=token(quota_server, "racer")
    ) as client:
        made, refused = await _at_once(lambda i: client.create_codebase(f"c{i}"))
        assert (len(made), refused) == (2, AT_ONCE - 2)
        codebases = await client.list_codebases()
        assert len(codebases) == 2  # (nothing half-made by the refused ones)
        codebase = codebases[0].id
        made, refused = await _at_once(lambda _: client.create_sandbox(codebase))
        assert (len(made), refused) == (2, AT_ONCE - 2)
        sandboxes = await client.list_sandboxes()
        assert len(sandboxes) == 2
        for sandbox in sandboxes:
            await client.destroy_sandbox(sandbox.id)
        for held in codebases:
            await client.delete_codebase(held.id)


async def _open_session(client: AsyncSandboxClient, sandbox_id: str, _: int) -> object:
    return await client.create_session(sandbox_id)


async def test_sessions_opened_at_once_hold_to_the_tenants_and_the_sandboxs_maximum(
    quota_server: ServerProcess,
) -> None:
    endpoint = quota_server.endpoint
    async with (
        AsyncSandboxClient(endpoint, api_key=token(quota_server, "opener")) as opener,
        AsyncSandboxClient(endpoint, api_key=token(quota_server, "roomy")) as roomy,
    ):
        for client, most in ((opener, 1), (roomy, 2)):  # quota_sessions; max per sandbox
            codebase = await client.create_codebase("sessions")
            sandbox = await client.create_sandbox(codebase.id)
            await client.start_sandbox(sandbox.id)
            made, refused = await _at_once(functools.partial(_open_session, client, sandbox.id))
            assert (len(made), refused) == (most, AT_ONCE - most)
            assert len(await client.list_sessions(sandbox.id)) == most
            await client.destroy_sandbox(sandbox.id)
            await client.delete_codebase(codebase.id)


async def test_uploads_at_once_hold_to_the_bytes_quota_declared_or_not(
    quota_server: ServerProcess,
) -> None:
    key = token(quota_server, "uploader")
    async with AsyncSandboxClient(quota_server.endpoint, api_key=key) as client:
        codebase = await client.create_codebase("bytes")
        made, refused = await _at_once(
            lambda i: client.upload_file(codebase.id, f"declared{i}.bin", b"x" * (40 * KiB))
        )
        assert (len(made), refused) == (1, AT_ONCE - 1)
        assert (await client.get_codebase(codebase.id)).size == 40 * KiB

        # The same without total_size: checked when the data is in, before it is in place.
        path = "/sandbox.v1.CodebaseService/UploadFiles"
        handler = every_rpc()[path]

        async def undeclared(index: int) -> object:
            meta = pb.UploadChunkMetadata(codebase_id=codebase.id, file_path=f"u{index}.bin")
            chunks = [pb.UploadChunk(metadata=meta), pb.UploadChunk(data=b"y" * (20 * KiB))]
            answer = await raw_call(
                quota_server.endpoint,
                path,
                handler,
                chunks,
                metadata={"authorization": f"Bearer {key}"},
            )
            if answer.error is not None:
                assert answer.error.status.name == "RESOURCE_EXHAUSTED", answer.error
                raise ResourceLimitExceededError(answer.error.message or "")
            return answer.replies

        made, refused = await _at_once(undeclared)
        assert (len(made), refused) == (1, AT_ONCE - 1)  # 40 KiB held, 64 KiB allowed
        assert (await client.get_codebase(codebase.id)).size == 60 * KiB
        await client.delete_codebase(codebase.id)


async def test_the_directories_an_upload_makes_count_against_the_entries_quota(
    quota_server: ServerProcess,
) -> None:
    async with AsyncSandboxClient(
        quota_server.endpoint, api_key=token(quota_server, "digger")
    ) as client:
        codebase = await client.create_codebase("deep")
        with pytest.raises(ResourceLimitExceededError, match="quota_codebase_entries"):
            await client.upload_file(codebase.id, "/".join(["d"] * 200) + "/f.txt", b"deep")
        assert await client.list_files(codebase.id, recursive=True) == []
        # Right up to the quota, directories included (11 directories and the file: 12).
        await client.upload_file(codebase.id, "/".join(["d"] * 11) + "/f.txt", b"fits")
        assert len(await client.list_files(codebase.id, recursive=True)) == 12
        # Replacing a file adds no entry, even at the quota.
        await client.upload_file(codebase.id, "/".join(["d"] * 11) + "/f.txt", b"again")
        with pytest.raises(ResourceLimitExceededError, match="quota_codebase_entries"):
            await client.upload_file(codebase.id, "d/g.txt", b"")
        await client.delete_codebase(codebase.id)
