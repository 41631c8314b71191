"""The limit on what a sandbox may write between commits (``max_delta_bytes``, and
``max_delta_entries``), on both runtimes: a disk filler gets ENOSPC, its command says so, and
nothing else suffers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense import AsyncSandbox, ResourceLimitExceededError, RuntimeType
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

LIMIT = 8 * 1024 * 1024
ENTRIES = 200
RUNTIMES = [
    pytest.param({}, id="bwrap"),
    pytest.param(
        {"runtime": RuntimeType.DOCKER, "image": "agentfense/busybox:latest"}, id="docker"
    ),
]


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(
        tmp_path_factory.mktemp("delta-limit"),
        settings={"max_delta_bytes": str(LIMIT), "max_delta_entries": str(ENTRIES)},
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_disk_filler_is_stopped_at_the_limit(
    small_server: ServerProcess, project: Path, runtime: dict[str, object]
) -> None:
    async with await AsyncSandbox.from_local(
        project,
        preset="development",
        endpoint=small_server.endpoint,
        **runtime,  # type: ignore[arg-type]
    ) as sandbox:
        filler = await sandbox.run("dd if=/dev/zero of=/workspace/fill bs=1M count=64")
        assert filler.exit_code != 0
        assert "No space left on device" in filler.stderr
        assert filler.limit_exceeded == "disk"
        # What fitted was committed; the next command has the whole budget again.
        size = len(await sandbox.client.download_file(sandbox.codebase_id, "fill"))
        assert 0 < size <= LIMIT
        again = await sandbox.run("rm /workspace/fill; head -c 4000000 /dev/zero > /workspace/ok")
        assert (again.exit_code, again.limit_exceeded) == (0, None)
        with pytest.raises(ResourceLimitExceededError, match="max_delta_bytes"):
            await sandbox.write_file("/workspace/big.bin", b"x" * (LIMIT + 1))
        async with sandbox.session() as session:
            result = await session.exec("head -c 20000000 /dev/zero > /tmp/x; echo tmp-ok")
            assert result.stdout == "tmp-ok\n"  # /tmp is not the workspace's delta
            filled = await session.exec("head -c 20000000 /dev/zero > /workspace/f2")
            assert filled.limit_exceeded == "disk"


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_empty_entries_count_too(
    small_server: ServerProcess, project: Path, runtime: dict[str, object]
) -> None:
    """Empty directories cost no bytes but an inode each: counted against their own limit."""
    async with await AsyncSandbox.from_local(
        project,
        preset="development",
        endpoint=small_server.endpoint,
        **runtime,  # type: ignore[arg-type]
    ) as sandbox:
        many = await sandbox.run(
            f"cd /workspace && for i in $(seq {ENTRIES + 50}); do mkdir d$i || exit 1; done"
        )
        assert many.exit_code != 0
        assert "No space left on device" in many.stderr
        assert many.limit_exceeded == "disk"
        made = await sandbox.run("ls -d /workspace/d[0-9]* | wc -l")
        assert int(made.stdout) == ENTRIES
        again = await sandbox.run("mkdir /workspace/next")  # a new command's budget
        assert (again.exit_code, again.limit_exceeded) == (0, None)
