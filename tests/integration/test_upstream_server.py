"""Against a server of the ``sandbox.v1`` API without AgentFense's extensions (as the upstream
Go server is: no sandbox-file RPCs, stdin of Exec dropped, an owner required), the SDK works
where it can and refuses where it cannot: a failure is never reported as success."""

from __future__ import annotations

import getpass
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense import AsyncSandbox, AsyncSandboxClient, Sandbox, SandboxError, SandboxStatus
from agentfense.errors import StatusCode
from agentfense.testing import ServerProcess

from ._upstream_like import UpstreamLike

pytestmark = pytest.mark.anyio


@pytest.fixture
def upstream(server: ServerProcess) -> Iterator[UpstreamLike]:
    directory = tempfile.mkdtemp(prefix="af-up-")  # short: a socket path has a limit
    socket_path = os.path.join(directory, "s.sock")
    proxy = UpstreamLike(socket_path, str(server.socket_path))
    proxy.start()
    yield proxy
    proxy.stop()
    os.unlink(socket_path)
    os.rmdir(directory)


async def test_a_write_whose_content_is_dropped_fails_and_writes_nothing(
    upstream: UpstreamLike, project: Path
) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="agent-safe", endpoint=upstream.endpoint
    ) as sandbox:
        await sandbox.run("mkdir -p output && echo kept > output/kept.txt")
        writes: list[tuple[str, str | bytes]] = [
            ("output/new.txt", "hello"),
            ("output/kept.txt", b"\x00new"),
        ]
        for path, content in writes:
            with pytest.raises(SandboxError, match="received 0 of") as refused:
                await sandbox.write_file(path, content)
            assert refused.value.code == StatusCode.DATA_LOSS
            assert "nothing was written" in str(refused.value)
        assert sandbox.client.lacks_file_rpcs
        listing = await sandbox.run("ls output; cat output/kept.txt; ls /tmp")
        assert listing.stdout == "kept.txt\nkept\n"  # no empty file, no temporary left


async def test_reads_and_listings_work_through_commands(
    upstream: UpstreamLike, project: Path
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=upstream.endpoint) as sandbox:
        await sandbox.run("true")  # view-only: reads are refused, listings are not
        names = {f.path for f in await sandbox.list_files(recursive=True)}
        assert names == {
            "/workspace/README.md",
            "/workspace/data.bin",
            "/workspace/src",
            "/workspace/src/app.py",
        }
        with pytest.raises(SandboxError, match="Permission denied"):
            await sandbox.read_file("README.md")
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=upstream.endpoint
    ) as sandbox:
        assert await sandbox.read_file_bytes("data.bin") == (project / "data.bin").read_bytes()
        assert await sandbox.read_file("README.md") == "# demo\n"
        assert sandbox.client.lacks_file_rpcs


async def test_from_local_names_an_owner(
    upstream: UpstreamLike, endpoint: str, project: Path
) -> None:
    async with (
        await AsyncSandbox.from_local(project, endpoint=upstream.endpoint) as sandbox,
        AsyncSandboxClient(endpoint) as client,
    ):
        codebase = await client.get_codebase(sandbox.codebase_id)
        assert codebase.owner_id == getpass.getuser()
    async with await AsyncSandbox.from_local(
        project, endpoint=upstream.endpoint, owner_id="team"
    ) as sandbox:
        assert (await sandbox.client.get_codebase(sandbox.codebase_id)).owner_id == "team"


async def test_a_sandbox_asked_to_start_as_it_is_made_is_started_all_the_same(
    upstream: UpstreamLike,
) -> None:
    """The server starts no sandbox in CreateSandbox: the SDK sees it not running, and starts it."""
    async with AsyncSandboxClient(upstream.endpoint) as client:
        codebase = await client.create_codebase("upstream-start", owner_id="someone")
        info = await client.create_sandbox(codebase.id, start=True)
        assert info.status is SandboxStatus.RUNNING
        assert (await client.exec(info.id, "echo up")).stdout == "up\n"
        await client.destroy_sandbox(info.id)
        await client.delete_codebase(codebase.id)


def test_the_sync_api_refuses_a_dropped_write(upstream: UpstreamLike, project: Path) -> None:
    with Sandbox.from_local(project, preset="agent-safe", endpoint=upstream.endpoint) as sandbox:
        with pytest.raises(SandboxError, match="received 0 of 3 bytes"):
            sandbox.write_file("output/x.txt", "abc")
        assert sandbox.run("ls output").stdout == ""
