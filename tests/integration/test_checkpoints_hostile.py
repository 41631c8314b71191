"""A hostile client against checkpoints on a real server: calls at once cannot pass the
most checkpoints a sandbox may have, and a restore cannot bring back for nothing what its
limits charged once (a codebase grown past its cap without end)."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from agentfense import AsyncSandbox, AsyncSandboxClient, ResourceLimitExceededError
from agentfense.server.checkpoints import MAX_CHECKPOINTS
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

FILE = 1024 * 1024


async def _manual(client: AsyncSandboxClient, endpoint: str) -> AsyncSandbox:
    codebase = await client.create_codebase("checkpoints", "tester")
    await client.upload_file(codebase.id, "README.md", "# demo\n")
    return await AsyncSandbox.from_codebase(
        codebase.id, preset="development", endpoint=endpoint, commit="manual"
    )


async def test_checkpoints_asked_at_once_stop_at_the_most_a_sandbox_may_have(
    client: AsyncSandboxClient, endpoint: str
) -> None:
    async with await _manual(client, endpoint) as sandbox:
        await sandbox.run("echo changed > README.md", raise_on_error=True)
        refused = 0

        async def one() -> None:
            nonlocal refused
            try:
                await sandbox.checkpoint()
            except ResourceLimitExceededError:
                refused += 1

        async with anyio.create_task_group() as tg:
            for _ in range(MAX_CHECKPOINTS + 16):
                tg.start_soon(one)
        assert len(await sandbox.list_checkpoints()) == MAX_CHECKPOINTS
        assert refused == 16


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(
        tmp_path_factory.mktemp("capped"),
        settings={"max_delta_bytes": str(2 * FILE), "max_codebase_bytes": str(3 * FILE)},
    )
    yield running
    assert running.stop() == 0, running.log()


async def _grow(sandbox: AsyncSandbox, rounds: int) -> None:
    """Restore the sandbox's first checkpoint, rename its file, commit; ``rounds`` times."""
    checkpoint = (await sandbox.list_checkpoints())[0]
    for round_ in range(rounds):
        await sandbox.restore(checkpoint)
        await sandbox.run(f"mv a a{round_}", raise_on_error=True)
        await sandbox.commit()


async def test_a_restore_cannot_grow_a_codebase_past_its_cap(capped_server: ServerProcess) -> None:
    endpoint = capped_server.endpoint
    client = AsyncSandboxClient(endpoint=endpoint)
    async with client, await _manual(client, endpoint) as sandbox:
        await sandbox.run(f"head -c {FILE} /dev/zero > a", raise_on_error=True)
        await sandbox.checkpoint()
        with pytest.raises(ResourceLimitExceededError, match="max_codebase_bytes"):
            await _grow(sandbox, 6)
        held = (await client.get_codebase(sandbox.codebase_id)).size
        assert held <= 3 * FILE


async def test_a_fork_cannot_grow_a_codebase_past_its_cap(capped_server: ServerProcess) -> None:
    """A fork brings in its parent's changes at once: refused when they would pass its
    limits, as a restore is (else each fork, committed, adds what the parent wrote once)."""
    endpoint = capped_server.endpoint
    client = AsyncSandboxClient(endpoint=endpoint)
    async with client, await _manual(client, endpoint) as parent:
        await parent.run(f"head -c {FILE} /dev/zero > a", raise_on_error=True)

        async def grow(rounds: int) -> None:
            for round_ in range(rounds):
                async with await parent.fork() as child:
                    await child.run(f"mv a a{round_}", raise_on_error=True)
                    await child.commit()

        with pytest.raises(ResourceLimitExceededError, match="max_codebase_bytes"):
            await grow(6)
        held = (await client.get_codebase(parent.codebase_id)).size
        assert held <= 3 * FILE
        assert {s.id for s in await client.list_sandboxes(parent.codebase_id)} == {parent.id}
