"""A tenant calling GetCodebase at once on its large codebase, over a real server: the sizes
it is told are right, and another tenant's calls go on meanwhile. (Every call walked the
whole tree on the server's worker threads: 180 calls on 100,000 entries held another
tenant's one-byte upload for 148 s.) The codebase is made large on disk and the server
started again, so that nothing of it is counted yet: the state a server is in after any
restart."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandboxClient, PermissionRule
from agentfense.testing import start_server_process

from ._callers import token

pytestmark = pytest.mark.anyio
FILES = 50_000
CALLS = 60  # at once, each three times
PATIENCE = 15.0  # seconds another tenant's calls may take, all told (not a benchmark)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (what is tested is the server's: one client loop is enough)


def _fill(files: Path) -> None:
    for d in range(FILES // 1000):
        directory = files / f"d{d}"
        directory.mkdir()
        for i in range(1000):
            (directory / f"f{i}").write_bytes(b"x")


async def test_sizes_asked_at_once_cost_one_count_and_hold_no_one_up(tmp_path: Path) -> None:
    running = start_server_process(tmp_path)
    try:
        alpha, beta = token(running, "alpha"), token(running, "beta")
        async with AsyncSandboxClient(running.endpoint, api_key=alpha) as client:
            big = (await client.create_codebase("big")).id
        _fill(running.state_dir / "codebases" / big / "files")
    finally:
        running.owns_state = False  # (kept for the next start)
        assert running.stop() == 0, running.log()
    running = start_server_process(tmp_path)  # (the same state: nothing counted yet)
    running.owns_state = True
    try:
        async with (
            AsyncSandboxClient(running.endpoint, api_key=alpha) as hostile,
            AsyncSandboxClient(running.endpoint, api_key=beta) as other,
        ):
            small = (await other.create_codebase("small")).id
            counts: list[tuple[int, int]] = []
            waited: list[float] = []

            async def ask() -> None:
                for _ in range(3):
                    info = await hostile.get_codebase(big)
                    counts.append((info.file_count, info.size))

            async def upload() -> None:
                began = time.monotonic()
                for n in range(5):
                    await other.upload_file(small, f"f{n}.txt", b"x")
                    await other.get_codebase(small)
                waited.append(time.monotonic() - began)

            with anyio.fail_after(PATIENCE * 4):
                async with anyio.create_task_group() as tg:
                    for _ in range(CALLS):
                        tg.start_soon(ask)
                    tg.start_soon(upload)
            assert waited[0] < PATIENCE, f"another tenant's calls took {waited[0]:.1f} s"
            assert set(counts) == {(FILES, FILES)}
            # What a sandbox commits is in the next count (it reports no file count).
            sandbox = await hostile.create_sandbox(big, permissions=[PermissionRule("**", "write")])
            await hostile.start_sandbox(sandbox.id)
            wrote = await hostile.exec(sandbox.id, "printf ab > new.txt && rm d0/f0 d0/f1")
            assert wrote.exit_code == 0, wrote.stderr
            info = await hostile.get_codebase(big)
            assert (info.file_count, info.size) == (FILES - 1, FILES)
            await hostile.destroy_sandbox(sandbox.id)
    finally:
        assert running.stop() == 0, running.log()
