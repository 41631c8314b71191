"""A tenant listing its large codebase recursively, over a real server, must not hold up
another tenant's calls (found by the hostile tester of issue 12): ListFiles and
ListSandboxFiles return every entry below the path in one message, which the server built
and encoded on the event loop that serves every client (30,000 entries of long names held
another tenant's GetCodebase for 3.7 s; 100,000: 46 s and +330 MB), and a tenant may hold
10,000,000 entries. Now a listing is refused beyond ``max_list_entries`` as soon as the walk
finds one more, and its reply is built and encoded in a worker thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandboxClient, PermissionRule, ResourceLimitExceededError
from agentfense.testing import ServerProcess, start_server_process

from ._callers import token

pytestmark = pytest.mark.anyio
ENTRIES = 30_000
PATIENCE = 1.0  # seconds one small call of another tenant may take (it takes ~10 ms)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (what is tested is the server's: one client loop is enough)


@pytest.fixture
def listing_server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server_process(tmp_path)
    yield running
    assert running.stop() == 0, running.log()


async def test_a_large_recursive_listing_holds_no_other_tenant_up(
    listing_server: ServerProcess,
) -> None:
    endpoint = listing_server.endpoint
    async with (
        AsyncSandboxClient(endpoint, api_key=token(listing_server, "lister")) as lister,
        AsyncSandboxClient(endpoint, api_key=token(listing_server, "other")) as other,
    ):
        big = (await lister.create_codebase("big")).id
        files = listing_server.state_dir / "codebases" / big / "files"
        for d in range(ENTRIES // 1000):  # (as a long run of uploads would leave it)
            directory = files / ("d" * 200 + str(d))
            directory.mkdir()
            for i in range(1000):
                (directory / (f"{i}" + "f" * 200)).write_bytes(b"")
        small = (await other.create_codebase("small")).id
        waits: list[float] = []
        listed: list[int] = []

        async def list_all() -> None:
            listed.append(len(await lister.list_files(big, recursive=True)))

        async def meanwhile() -> None:
            await anyio.sleep(0.3)
            while not listed:
                began = time.monotonic()
                await other.get_codebase(small)
                waits.append(time.monotonic() - began)
                await anyio.sleep(0.1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(list_all)
            tg.start_soon(meanwhile)
        assert listed == [ENTRIES + ENTRIES // 1000]
        assert max(waits) < PATIENCE, f"another tenant's call waited {max(waits):.1f} s"


@pytest.fixture
def capped_server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server_process(tmp_path, settings={"max_list_entries": "50"})
    yield running
    assert running.stop() == 0, running.log()


async def test_a_listing_beyond_max_list_entries_is_refused_in_a_sentence(
    capped_server: ServerProcess,
) -> None:
    async with AsyncSandboxClient(capped_server.endpoint) as client:
        codebase = (await client.create_codebase("many")).id
        files = capped_server.state_dir / "codebases" / codebase / "files"
        for d in range(6):
            (files / f"d{d}").mkdir()
            for i in range(9):
                (files / f"d{d}" / f"f{i}").write_bytes(b"")
        assert len(await client.list_files(codebase, "d0", recursive=True)) == 9
        assert len(await client.list_files(codebase)) == 6  # (not recursive: 6 entries)
        with pytest.raises(ResourceLimitExceededError) as refused:
            await client.list_files(codebase, recursive=True)  # 60 entries
        assert refused.value.message == (
            "the listing of the root has more than 50 entries, the most one listing returns "
            "(max_list_entries); list a directory further down, or without recursive"
        )
        sandbox = await client.create_sandbox(codebase, permissions=[PermissionRule("**", "read")])
        await client.start_sandbox(sandbox.id)
        assert len(await client.list_sandbox_files(sandbox.id, "/workspace/d1")) == 9
        with pytest.raises(ResourceLimitExceededError, match="more than 50 entries"):
            await client.list_sandbox_files(sandbox.id, "/workspace", recursive=True)
        await client.destroy_sandbox(sandbox.id)
