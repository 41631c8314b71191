"""Quotas per tenant (issue 12): sandboxes, open sessions, codebases, and the bytes and entries
of a tenant's codebases, each with the server's default and a tenant's own from the config
file. Against a real server, as real tenants (tokens made by the CLI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense import AsyncSandboxClient, PermissionRule, ResourceLimitExceededError
from agentfense.testing import ServerProcess, start_server_process

from ._callers import token

pytestmark = pytest.mark.anyio
KiB = 1024


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("quotas")
    config = root / "server.toml"
    config.write_text(
        "[server]\n"
        "quota_codebases = 2\n"
        "quota_sessions = 1\n"
        f"quota_codebase_bytes = {64 * KiB}\n"
        "quota_codebase_entries = 12\n"
        "[server.quotas.big]\n"
        "codebases = 4\n"
        "sessions = 2\n"
    )
    running = start_server_process(root, settings={"config": str(config)})
    yield running
    assert running.stop() == 0, running.log()


async def test_codebases_count_per_tenant_with_a_tenants_own_quota(
    quota_server: ServerProcess,
) -> None:
    endpoint = quota_server.endpoint
    async with (
        AsyncSandboxClient(endpoint, api_key=token(quota_server, "small")) as small,
        AsyncSandboxClient(endpoint, api_key=token(quota_server, "big")) as big,
    ):
        made = [await small.create_codebase("one"), await small.create_codebase("two", "x")]
        with pytest.raises(ResourceLimitExceededError, match="quota of 2 codebases") as full:
            await small.create_codebase("three", "another-owner-id")  # (a label: no way round)
        assert full.value.code == 8
        theirs = [await big.create_codebase(f"b{i}") for i in range(4)]  # its own quota: 4
        with pytest.raises(ResourceLimitExceededError, match="quota of 4 codebases"):
            await big.create_codebase("b5")
        await small.delete_codebase(made[0].id)
        made[0] = await small.create_codebase("one again")  # room again
        for codebase in made:
            await small.delete_codebase(codebase.id)
        for codebase in theirs:
            await big.delete_codebase(codebase.id)


async def test_open_sessions_count_across_a_tenants_sandboxes(
    quota_server: ServerProcess, tmp_path: Path
) -> None:
    endpoint = quota_server.endpoint
    async with (
        AsyncSandboxClient(endpoint, api_key=token(quota_server, "solo")) as solo,
        AsyncSandboxClient(endpoint, api_key=token(quota_server, "big")) as big,
    ):
        codebase = await solo.create_codebase("sessions")
        first = await solo.create_sandbox(codebase.id)
        second = await solo.create_sandbox(codebase.id)
        await solo.start_sandbox(first.id)
        await solo.start_sandbox(second.id)
        held = await solo.create_session(first.id)
        with pytest.raises(ResourceLimitExceededError, match="quota of 1 open sessions"):
            await solo.create_session(second.id)  # another sandbox: the same tenant's quota
        # Another tenant is not held up by it (its own quota: 2).
        other = await big.create_codebase("sessions")
        theirs = await big.create_sandbox(other.id)
        await big.start_sandbox(theirs.id)
        await big.create_session(theirs.id)
        await big.create_session(theirs.id)
        await solo.destroy_session(held.id)
        await solo.create_session(second.id)  # room again
        for sandbox_id in (first.id, second.id):
            await solo.destroy_sandbox(sandbox_id)
        await solo.delete_codebase(codebase.id)
        await big.destroy_sandbox(theirs.id)
        await big.delete_codebase(other.id)


async def test_codebase_bytes_and_entries_count_uploads_and_what_sandboxes_write(
    quota_server: ServerProcess,
) -> None:
    endpoint = quota_server.endpoint
    async with AsyncSandboxClient(endpoint, api_key=token(quota_server, "files")) as client:
        first = await client.create_codebase("a")
        second = await client.create_codebase("b")
        await client.upload_file(first.id, "big.bin", b"x" * (40 * KiB))
        with pytest.raises(ResourceLimitExceededError, match="quota_codebase_bytes"):
            # (in another codebase: the quota is the tenant's)
            await client.upload_file(second.id, "more.bin", b"y" * (30 * KiB))
        assert [f.path for f in await client.list_files(second.id)] == []  # nothing half-made
        await client.upload_file(first.id, "big.bin", b"x" * (10 * KiB))  # replaced: smaller
        await client.upload_file(second.id, "more.bin", b"y" * (30 * KiB))  # fits now
        # What a sandbox writes counts too, once committed.
        sandbox = await client.create_sandbox(
            second.id, permissions=[PermissionRule("**", "write")]
        )
        await client.start_sandbox(sandbox.id)
        wrote = await client.exec(sandbox.id, "head -c 20000 /dev/zero > written.bin")
        assert wrote.exit_code == 0, wrote.stderr
        with pytest.raises(ResourceLimitExceededError, match="quota_codebase_bytes"):
            await client.upload_file(first.id, "late.bin", b"z" * (10 * KiB))
        removed = await client.exec(sandbox.id, "rm written.bin")
        assert removed.exit_code == 0, removed.stderr
        await client.upload_file(first.id, "late.bin", b"z" * (10 * KiB))
        # Entries: files, and the directories an upload makes (12 in all; 3 held now).
        for n in range(4):
            await client.upload_file(first.id, f"d{n}/f.txt", b"")  # 2 entries each
        await client.upload_file(first.id, "twelfth.txt", b"")
        with pytest.raises(ResourceLimitExceededError, match="quota_codebase_entries"):
            await client.upload_file(first.id, "one-too-many.txt", b"")
        await client.destroy_sandbox(sandbox.id)
        await client.delete_codebase(first.id)
        await client.delete_codebase(second.id)
