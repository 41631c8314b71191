"""A hostile client against checkpoints on a real server: calls at once cannot pass the
most checkpoints a sandbox may have, and a restore cannot bring back for nothing what its
limits charged once (a codebase grown past its cap without end)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="module")
def small_delta_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(
        tmp_path_factory.mktemp("small-delta"),
        settings={"max_delta_entries": "1000", "max_delta_bytes": str(64 * FILE)},
    )
    yield running
    assert running.stop() == 0, running.log()


def _taken(where: Path) -> tuple[int, int]:
    """The inodes and bytes of blocks below ``where``, each inode once (as du counts)."""
    seen: set[int] = set()
    blocks = 0
    for path in [where, *where.rglob("*")]:
        st = path.lstat()
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            blocks += st.st_blocks * 512
    return len(seen), blocks


async def test_checkpoints_take_of_the_disk_no_more_than_a_delta_may(
    small_delta_server: ServerProcess,
) -> None:
    """Checkpoints link a sandbox's files, but make its directories anew and copy a file it
    gave several names: nothing counted that, and 10 checkpoints of 20,000 directories took
    200,000 inodes; a sparse file of 3 GiB with two names, 3 GiB of blocks per checkpoint (a
    hostile tester's findings). Now a copy keeps its holes, and a sandbox's checkpoints
    together may take what its delta may: past that, one is refused until some go."""
    endpoint = small_delta_server.endpoint
    async with AsyncSandboxClient(endpoint) as client, await _manual(client, endpoint) as sandbox:
        await sandbox.run(
            "mkdir -p dirs && cd dirs && for i in $(seq 300); do mkdir d$i; done && cd .. "
            "&& truncate -s 40M sparse && ln sparse sparse2 "
            "&& head -c 10000000 /dev/urandom > big && ln big big2",
            raise_on_error=True,
        )
        where = small_delta_server.state_dir / "deltas" / sandbox.id / "checkpoints"
        kept = [await sandbox.checkpoint() for _ in range(3)]  # (about 300 inodes each)
        inodes, taken = _taken(where / kept[0].id)
        assert inodes < 320, inodes
        # The 10 MB file's copy; the sparse one's, nothing (with its 40 MiB, a second
        # checkpoint would pass the 64 MiB).
        assert taken < 12 * FILE, taken
        with pytest.raises(ResourceLimitExceededError) as refused:
            await sandbox.checkpoint()
        assert "checkpoints would take more of the disk" in str(refused.value)
        assert len(await sandbox.list_checkpoints()) == 3
        assert sorted(p.name for p in where.iterdir()) == sorted(c.id for c in kept)
        await sandbox.delete_checkpoint(kept[0])
        await sandbox.checkpoint()  # (room again)
        restored = await sandbox.restore(kept[1])
        assert restored.id == kept[1].id
        listed = await sandbox.run("ls dirs | wc -l; stat -c '%s %h' sparse big")
        assert listed.stdout.split() == ["300", str(40 * FILE), "2", "10000000", "2"]


async def test_forks_cancelled_leave_no_mount_point(server: ServerProcess) -> None:
    """A fork cancelled before its view's mount began left the mount point's directory
    behind, one per fork (a hostile tester's finding)."""
    views = server.state_dir / "fs" / "views"
    async with (
        AsyncSandboxClient(server.endpoint) as client,
        await _manual(client, server.endpoint) as sandbox,
    ):
        await sandbox.run("mkdir d && cd d && for i in $(seq 2000); do echo $i > f$i; done")
        before = {path.name for path in views.iterdir()}
        for delay in (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15):
            with anyio.move_on_after(delay):
                await client.fork_sandbox(sandbox.id)
        await anyio.sleep(0.5)  # (what a cancelled call left: its cleanup is done by now)
        made = {info.id for info in await client.list_sandboxes()} - before
        for sandbox_id in made:  # (forks that were whole before their cancellation)
            await client.destroy_sandbox(sandbox_id)
        left = {path.name for path in views.iterdir()} - before
        assert left == set(), left
