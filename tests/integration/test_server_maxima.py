"""Server-wide defaults and maxima from the config, enforced on every sandbox."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    InvalidConfigurationError,
    ResourceLimitExceededError,
    ResourceLimits,
)
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(
        tmp_path_factory.mktemp("maxima"),
        settings={
            "quota_sandboxes": "2",
            "default_memory_bytes": str(64 * MiB),
            "max_pids_limit": "100",
            "max_timeout": "5",
            "default_timeout": "5",
        },
    )
    yield running
    assert running.stop() == 0, running.log()


async def test_defaults_apply_and_maxima_hold(strict_server: ServerProcess, project: Path) -> None:
    endpoint = strict_server.endpoint
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        assert sandbox.info.resources == ResourceLimits(memory_bytes=64 * MiB, pids_limit=100)
        killed = await sandbox.run("python3 -c 'x = bytearray(200 * 1024 * 1024)'")
        assert killed.limit_exceeded == "memory"
        with pytest.raises(InvalidConfigurationError, match="at most 5 seconds"):
            await sandbox.run("true", timeout=60)
        async with sandbox.session() as session:
            with pytest.raises(InvalidConfigurationError, match="at most 5 seconds"):
                await session.exec("true", timeout=60)
        # A file outside /workspace is read by a command, within this server's max_timeout.
        await sandbox.run("echo outside > /tmp/note")
        assert await sandbox.read_file("/tmp/note") == "outside\n"
    with pytest.raises(InvalidConfigurationError, match="max_pids_limit"):
        await AsyncSandbox.from_local(
            project, endpoint=endpoint, resources=ResourceLimits(pids_limit=1000)
        )


async def test_sandboxes_per_tenant(strict_server: ServerProcess, project: Path) -> None:
    """The quota is the tenant's, whatever owner_id its codebases carry (a label)."""
    endpoint, owner = strict_server.endpoint, f"owner-{uuid.uuid4().hex}"
    async with AsyncSandboxClient(endpoint) as client:
        codebase = await client.create_codebase("quota", owner)
        first = await client.create_sandbox(codebase.id)
        await client.create_sandbox(codebase.id)
        other = await client.create_codebase("quota", f"other-{owner}")  # (no way around it)
        with pytest.raises(ResourceLimitExceededError, match="quota_sandboxes") as full:
            await client.create_sandbox(other.id)
        assert full.value.code == 8
        await client.destroy_sandbox(first.id)
        await client.create_sandbox(other.id)  # room again
        for sandbox in await client.list_sandboxes():
            await client.destroy_sandbox(sandbox.id)
        await client.delete_codebase(codebase.id)
        await client.delete_codebase(other.id)
