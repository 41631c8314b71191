"""``agentfense.fanout`` against a real server and real bwrap, on asyncio and trio."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    CommandExecutionError,
    ExecResult,
    SandboxError,
    SandboxStatus,
)
from agentfense.fanout import open_sandboxes, read_many, read_many_bytes, run_many

from ._procs import host_pids_running

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sandbox(endpoint: str, project: Path) -> AsyncIterator[AsyncSandbox]:
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=endpoint
    ) as opened:
        yield opened


def _projects(root: Path, count: int) -> list[Path]:
    """``count`` small projects, each with a file that names it."""
    paths = []
    for index in range(count):
        path = root / f"project-{index}"
        path.mkdir()
        (path / "name.txt").write_text(f"project {index}\n")
        paths.append(path)
    return paths


async def _leftovers(endpoint: str, owner: str) -> tuple[list[str], list[str]]:
    """The codebases of ``owner`` and the sandboxes on them."""
    async with AsyncSandboxClient(endpoint) as client:
        codebases = [c.id for c in await client.list_codebases(owner)]
        sandboxes = [s.id for s in await client.list_sandboxes() if s.codebase_id in set(codebases)]
    return codebases, sandboxes


async def _running(endpoint: str, owner: str) -> int:
    """How many sandboxes on the codebases of ``owner`` run."""
    async with AsyncSandboxClient(endpoint) as client:
        codebases = {c.id for c in await client.list_codebases(owner)}
        sandboxes = await client.list_sandboxes()
    return sum(s.codebase_id in codebases and s.status is SandboxStatus.RUNNING for s in sandboxes)


# -- many commands in one sandbox --------------------------------------------------------------


async def test_run_many_in_one_sandbox(sandbox: AsyncSandbox) -> None:
    results = await run_many(
        sandbox,
        ["sleep 0.3; echo first", "echo second >&2; exit 3", "cat README.md"],
    )
    assert [(r.stdout, r.stderr, r.exit_code) for r in results] == [
        ("first\n", "", 0),
        ("", "second\n", 3),
        ("# demo\n", "", 0),
    ]


async def test_run_many_without_a_limit_runs_every_command_at_once(sandbox: AsyncSandbox) -> None:
    # Each command waits until all six are running: only a true fan-out gets them through.
    barrier = (
        "mkdir -p /tmp/all; touch /tmp/all/$N; i=0; "
        'while [ "$(ls /tmp/all | wc -l)" -lt 6 ]; do '
        "i=$((i+1)); [ $i -gt 200 ] && exit 9; sleep 0.05; done; echo $N"
    )
    commands = [f"N={n}; {barrier}" for n in range(6)]
    results = await run_many(sandbox, commands, raise_on_error=True, timeout=30)
    assert [r.stdout for r in results] == [f"{n}\n" for n in range(6)]


async def test_run_many_limit_bounds_the_commands_running_at_once(sandbox: AsyncSandbox) -> None:
    # Each command counts the commands running while it sleeps.
    count = "mkdir -p /tmp/run; touch /tmp/run/$N; sleep 0.3; ls /tmp/run | wc -l; rm /tmp/run/$N"
    results = await run_many(sandbox, [f"N={n}; {count}" for n in range(6)], limit=2)
    seen = [int(r.stdout) for r in results]
    assert all(r.exit_code == 0 for r in results)
    assert max(seen) <= 2, seen  # (that they run in parallel at all: the test above)


async def test_run_many_failing_fast_kills_the_other_commands(sandbox: AsyncSandbox) -> None:
    marker = f"1000.{uuid.uuid4().int % 10**9}"
    # The failing command waits until its sibling is surely running.
    fail_when_sleeping = (
        f"until ps -eo args | grep -q '[s]leep {marker}'; do sleep 0.05; done; "
        "echo failing >&2; exit 7"
    )
    with anyio.fail_after(20), pytest.raises(CommandExecutionError) as failed:
        await run_many(
            sandbox,
            [f"sleep {marker}; touch /tmp/survived", fail_when_sleeping],
            raise_on_error=True,
        )
    assert failed.value.exit_code == 7
    assert failed.value.stderr == "failing\n"
    # The server kills the cancelled command (and its process) promptly.
    with anyio.fail_after(5):
        while True:
            if not host_pids_running(f"sleep\0{marker}"):
                break
            await anyio.sleep(0.05)
    assert "survived" not in (await sandbox.run("ls /tmp")).stdout


async def test_run_many_return_exceptions_keeps_every_outcome(sandbox: AsyncSandbox) -> None:
    results = await run_many(
        sandbox,
        ["exit 4", "sleep 0.3; echo done"],
        raise_on_error=True,
        return_exceptions=True,
    )
    assert isinstance(results[0], CommandExecutionError)
    assert results[0].exit_code == 4
    assert isinstance(results[1], ExecResult)
    assert results[1].stdout == "done\n"


# -- many files from one sandbox ---------------------------------------------------------------


async def test_read_many_keeps_the_order_of_the_paths(sandbox: AsyncSandbox) -> None:
    paths = ["/workspace/src/app.py", "README.md", "/workspace/README.md"]
    assert await read_many(sandbox, paths) == {
        "/workspace/src/app.py": "print('hello from app')\n",
        "README.md": "# demo\n",
        "/workspace/README.md": "# demo\n",
    }
    assert list(await read_many(sandbox, reversed(paths), limit=1)) == paths[::-1]
    blobs = await read_many_bytes(sandbox, ["data.bin", "README.md", "data.bin"])
    assert blobs == {"data.bin": bytes(range(256)) * 4, "README.md": b"# demo\n"}


async def test_read_many_failures(sandbox: AsyncSandbox) -> None:
    with pytest.raises(SandboxError):
        await read_many(sandbox, ["README.md", "/workspace/missing.txt"])
    found = await read_many(
        sandbox, ["/workspace/missing.txt", "README.md"], return_exceptions=True
    )
    assert list(found) == ["/workspace/missing.txt", "README.md"]
    assert isinstance(found["/workspace/missing.txt"], SandboxError)
    assert found["README.md"] == "# demo\n"


# -- many sandboxes ----------------------------------------------------------------------------


async def test_open_sandboxes_opens_them_in_order_and_destroys_them_all(
    endpoint: str, tmp_path: Path
) -> None:
    owner = f"owner-{uuid.uuid4().hex}"
    paths = _projects(tmp_path, 3)
    async with open_sandboxes(
        paths, limit=2, preset="read-only", endpoint=endpoint, owner_id=owner
    ) as sandboxes:
        assert len({s.id for s in sandboxes}) == 3
        assert all(s.status is SandboxStatus.RUNNING for s in sandboxes)
        results = await run_many(sandboxes[0], ["cat name.txt"])
        assert results[0].stdout == "project 0\n"
        names = [(await s.run("cat name.txt")).stdout for s in sandboxes]
        assert names == ["project 0\n", "project 1\n", "project 2\n"]
        codebases, running = await _leftovers(endpoint, owner)
        assert sorted(running) == sorted(s.id for s in sandboxes)
        assert len(codebases) == 3
    assert await _leftovers(endpoint, owner) == ([], [])


async def test_open_sandboxes_destroys_them_when_the_block_fails(
    endpoint: str, tmp_path: Path
) -> None:
    owner = f"owner-{uuid.uuid4().hex}"
    seen: list[AsyncSandbox] = []

    async def fail_inside() -> None:
        async with open_sandboxes(
            _projects(tmp_path, 3), endpoint=endpoint, owner_id=owner
        ) as sandboxes:
            seen.extend(sandboxes)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_inside()
    assert len(seen) == 3
    assert await _leftovers(endpoint, owner) == ([], [])


@pytest.mark.parametrize("late", [False, True], ids=["at-once", "late"])
async def test_open_sandboxes_leaves_nothing_behind_when_one_cannot_be_made(
    endpoint: str, tmp_path: Path, late: bool
) -> None:
    """One source fails at once (the others are cancelled while being made) or late (once the
    others run): either way no sandbox and no codebase is left."""
    owner = f"owner-{uuid.uuid4().hex}"

    async def fails() -> AsyncSandbox:
        with anyio.fail_after(20):
            while late:
                if await _running(endpoint, owner) == 3:
                    break
                await anyio.sleep(0.05)
        raise LookupError("no such project")

    async def open_them() -> None:
        async with open_sandboxes(
            [*_projects(tmp_path, 3), fails], endpoint=endpoint, owner_id=owner
        ):
            pytest.fail("the block ran although a sandbox could not be made")

    with pytest.raises(LookupError, match="no such project"):
        await open_them()
    assert await _leftovers(endpoint, owner) == ([], [])


async def test_open_sandboxes_destroys_them_when_the_caller_is_cancelled(
    endpoint: str, tmp_path: Path
) -> None:
    owner = f"owner-{uuid.uuid4().hex}"
    with anyio.CancelScope() as scope:
        async with open_sandboxes(
            _projects(tmp_path, 3), endpoint=endpoint, owner_id=owner
        ) as sandboxes:
            assert await _running(endpoint, owner) == len(sandboxes) == 3
            scope.cancel()
            await anyio.sleep(30)
    assert scope.cancelled_caught
    assert await _leftovers(endpoint, owner) == ([], [])


async def test_open_sandboxes_cleans_up_after_a_sandbox_destroyed_behind_its_back(
    endpoint: str, tmp_path: Path
) -> None:
    owner = f"owner-{uuid.uuid4().hex}"
    async with (
        open_sandboxes(_projects(tmp_path, 3), endpoint=endpoint, owner_id=owner) as sandboxes,
        AsyncSandboxClient(endpoint) as client,
    ):
        await client.destroy_sandbox(sandboxes[1].id)
    assert await _leftovers(endpoint, owner) == ([], [])


async def test_open_sandboxes_takes_factories(endpoint: str, project: Path) -> None:
    owner = f"owner-{uuid.uuid4().hex}"
    async with AsyncSandboxClient(endpoint) as client:
        codebase = await client.create_codebase("shared", owner)
        await client.upload_file(codebase.id, "README.md", b"# shared\n")
        try:
            async with open_sandboxes(
                [
                    project,
                    lambda: AsyncSandbox.from_codebase(
                        codebase.id, preset="read-only", endpoint=endpoint
                    ),
                ],
                endpoint=endpoint,
                preset="read-only",
            ) as (local, shared):
                readmes = [(await s.read_file("README.md")) for s in (local, shared)]
                assert readmes == ["# demo\n", "# shared\n"]
                ids = {local.id, shared.id}
            assert ids.isdisjoint({s.id for s in await client.list_sandboxes()})
        finally:
            with anyio.CancelScope(shield=True):
                await client.delete_codebase(codebase.id)
