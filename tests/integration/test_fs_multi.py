"""Several sandboxes on one codebase: each one's commits reach the others, nothing else does
(real server, bwrap and FUSE; the codebase API is the owner's unfiltered view).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandboxClient,
    ExecResult,
    OutputStream,
    Permission,
    PermissionRule,
    SandboxError,
    SandboxStatus,
)
from agentfense.testing import ServerProcess

pytestmark = pytest.mark.anyio

FILES = {
    "shared.txt": b"v1\n",
    "doomed.txt": b"doomed\n",
    "file2dir": b"a file for now\n",
    "dir2file/inner.txt": b"inner\n",
    "race.txt": b"original\n",
    "keep/stay.txt": b"stay\n",
}
WRITE_ALL = [PermissionRule("**", Permission.WRITE)]


@dataclass
class Shared:
    client: AsyncSandboxClient
    codebase_id: str
    a: str
    b: str
    files: Path  # the codebase's tree on the host

    async def run(self, sandbox_id: str, command: str) -> ExecResult:
        return await self.client.exec(sandbox_id, command, timeout=60)

    async def download(self, rel: str) -> bytes:
        return await self.client.download_file(self.codebase_id, rel)

    async def paths(self) -> set[str]:
        return {f.path for f in await self.client.list_files(self.codebase_id, recursive=True)}

    async def add_sandbox(self, permissions: list[PermissionRule]) -> str:
        info = await self.client.create_sandbox(self.codebase_id, permissions=permissions)
        await self.client.start_sandbox(info.id)
        return info.id


@pytest.fixture
async def shared(client: AsyncSandboxClient, server: ServerProcess) -> AsyncIterator[Shared]:
    codebase = await client.create_codebase("multi")
    for rel, content in FILES.items():
        await client.upload_file(codebase.id, rel, content)
    files = server.state_dir / "codebases" / codebase.id / "files"
    a = await client.create_sandbox(codebase.id, permissions=WRITE_ALL)
    b = await client.create_sandbox(codebase.id, permissions=WRITE_ALL)
    try:
        for info in (a, b):
            await client.start_sandbox(info.id)
        yield Shared(client, codebase.id, a.id, b.id, files)
    finally:
        with anyio.CancelScope(shield=True):
            for sandbox in await client.list_sandboxes(codebase.id):
                await client.destroy_sandbox(sandbox.id)
            with contextlib.suppress(SandboxError):
                await client.delete_codebase(codebase.id)


async def test_commits_reach_the_other_sandbox(shared: Shared) -> None:
    a, b = shared.a, shared.b
    # Both look at everything first, so that their kernels cache entries and content.
    for sandbox in (a, b):
        primed = await shared.run(sandbox, "cat shared.txt doomed.txt; ls -la . dir2file file2dir")
        assert primed.exit_code == 0, primed.stderr

    # A new file: B sees it on its next command (though it looked for it before).
    assert (await shared.run(b, "cat created.txt")).exit_code != 0
    await shared.run(a, "echo new > created.txt")
    assert (await shared.run(b, "cat created.txt")).stdout == "new\n"

    # A change to a file A has read (and cached): A sees B's content, not its cache. The
    # size is the same, so only a dropped cache shows the change.
    assert (await shared.run(a, "cat shared.txt")).stdout == "v1\n"
    await shared.run(b, "echo v2 > shared.txt")
    assert (await shared.run(a, "cat shared.txt; stat -c %s shared.txt")).stdout == "v2\n3\n"

    # A deletion: gone for B, and B's later commits (of other files, in the same directory)
    # do not bring it back.
    await shared.run(a, "rm doomed.txt")
    gone = await shared.run(b, "cat doomed.txt; ls")
    assert "No such file or directory" in gone.stderr
    assert "doomed.txt" not in gone.stdout.split()
    await shared.run(b, "echo b > by-b.txt; touch keep/stay.txt; mkdir -p d && echo x > d/x")
    for sandbox in (a, b):
        assert "doomed.txt" not in (await shared.run(sandbox, "ls")).stdout.split()
    assert "doomed.txt" not in await shared.paths()
    assert await shared.download("by-b.txt") == b"b\n"

    # Type changes: a file becomes a directory, a directory a file.
    changed = await shared.run(
        a,
        "rm file2dir && mkdir file2dir && echo in > file2dir/inner && rm -r dir2file"
        " && echo now a file > dir2file",
    )
    assert changed.exit_code == 0, changed.stderr
    seen = await shared.run(b, "cat file2dir/inner dir2file; test -d file2dir && test -f dir2file")
    assert (seen.stdout, seen.exit_code) == ("in\nnow a file\n", 0), seen.stderr
    assert await shared.download("file2dir/inner") == b"in\n"
    assert "dir2file/inner.txt" not in await shared.paths()


async def test_the_last_committer_wins_per_file(shared: Shared) -> None:
    a, b = shared.a, shared.b
    await shared.run(a, "echo from a > race.txt")
    await shared.run(b, "echo from b > race.txt")
    assert await shared.download("race.txt") == b"from b\n"
    assert (await shared.run(a, "cat race.txt")).stdout == "from b\n"

    # B writes first but A's command ends last: A's write is the one that stays; each file
    # is decided on its own (B's other file is kept).
    async with anyio.create_task_group() as tg:
        tg.start_soon(shared.run, a, "echo late a > race.txt; sleep 1.5")
        await anyio.sleep(0.3)
        await shared.run(b, "echo early b > race.txt; echo only b > only-b.txt")
        assert await shared.download("race.txt") == b"early b\n"
    assert await shared.download("race.txt") == b"late a\n"
    assert await shared.download("only-b.txt") == b"only b\n"
    for sandbox in (a, b):
        assert (await shared.run(sandbox, "cat race.txt only-b.txt")).stdout == "late a\nonly b\n"


async def test_uncommitted_writes_stay_private_while_the_command_runs(shared: Shared) -> None:
    a, b = shared.a, shared.b
    async with shared.client.exec_stream(
        a, "echo draft > wip.txt; echo v9 > shared.txt; rm doomed.txt; echo ready; sleep 1"
    ) as stream:
        async for chunk in stream:
            if chunk.stream is OutputStream.STDOUT and b"ready" in chunk.data:
                break
        # A has written, its command still runs: neither B nor the codebase sees anything.
        seen = await shared.run(b, "cat shared.txt doomed.txt; ls")
        assert seen.stdout.splitlines()[:2] == ["v1", "doomed"]
        assert "wip.txt" not in seen.stdout
        assert await shared.download("shared.txt") == b"v1\n"
        assert "wip.txt" not in await shared.paths()
        assert (await shared.run(a, "cat wip.txt")).stdout == "draft\n"  # its own, it sees
        async for _ in stream:
            pass
    assert stream.exit_code == 0
    after = await shared.run(b, "cat wip.txt shared.txt; ls")
    assert after.stdout.splitlines()[:2] == ["draft", "v9"]
    assert "doomed.txt" not in after.stdout


async def test_stop_and_destroy_commit_what_background_processes_wrote(shared: Shared) -> None:
    a, b = shared.a, shared.b
    late = "(sleep 0.3; echo {0} > {0}.txt; echo {0} >> shared.txt) >/dev/null 2>&1 &"
    await shared.run(a, late.format("after-stop"))
    await anyio.sleep(0.8)  # written inside A by now, committed by nothing yet
    assert "after-stop.txt" not in await shared.paths()
    info = await shared.client.stop_sandbox(a)
    assert info.status is SandboxStatus.STOPPED
    assert await shared.download("after-stop.txt") == b"after-stop\n"
    assert (await shared.run(b, "cat shared.txt")).stdout == "v1\nafter-stop\n"

    await shared.client.start_sandbox(a)
    await shared.run(a, late.format("after-destroy"))
    await anyio.sleep(0.8)
    assert "after-destroy.txt" not in await shared.paths()
    await shared.client.destroy_sandbox(a)
    assert await shared.download("after-destroy.txt") == b"after-destroy\n"
    seen = await shared.run(b, "cat after-stop.txt after-destroy.txt shared.txt")
    assert seen.stdout == "after-stop\nafter-destroy\nv1\nafter-stop\nafter-destroy\n"


async def test_a_view_level_sandbox_lists_and_stats_but_never_reads(shared: Shared) -> None:
    viewer = await shared.add_sandbox([PermissionRule("**", Permission.VIEW)])
    listed = await shared.run(viewer, "ls -A . keep")
    assert listed.stdout.split() == [
        ".:", "dir2file", "doomed.txt", "file2dir", "keep", "race.txt", "shared.txt",
        "keep:", "stay.txt",
    ]  # fmt: skip
    stats = await shared.run(viewer, "stat -c '%n %s %F %A' *.txt keep/*; stat -c '%F %A' keep")
    assert stats.stdout.splitlines() == [
        "doomed.txt 7 regular file ----------",
        "race.txt 9 regular file ----------",
        "shared.txt 3 regular file ----------",
        "keep/stay.txt 5 regular file ----------",
        "directory dr-xr-xr-x",
    ], stats.stderr
    # The content of the files that other sandboxes write is as unreadable as the rest.
    await shared.run(shared.a, "echo secret-ish > fresh.txt")
    for command in [
        "cat shared.txt",
        "cat fresh.txt",
        "head -c1 keep/stay.txt",
        "cp fresh.txt /tmp/copy",
        "echo x >> shared.txt",
        "touch new.txt",
        "rm shared.txt",
    ]:
        result = await shared.run(viewer, command)
        assert result.exit_code != 0, command
        assert "Permission denied" in result.stderr, (command, result.stderr)
        assert "secret-ish" not in result.stdout
    assert "fresh.txt" in (await shared.run(viewer, "ls")).stdout.split()
    assert await shared.download("shared.txt") == b"v1\n"


async def test_an_upload_reaches_running_sandboxes_at_once(shared: Shared) -> None:
    """The codebase API writes under sandboxes' views: their kernels must not keep serving
    what they cached (entries and attributes are cached for an hour)."""
    b = shared.b
    primed = await shared.run(b, "cat shared.txt; ls; ls fresh")
    assert primed.stdout.startswith("v1\n")
    await shared.client.upload_file(shared.codebase_id, "shared.txt", b"uploaded\n")
    await shared.client.upload_file(shared.codebase_id, "fresh/new.txt", b"new\n")
    seen = await shared.run(b, "cat shared.txt fresh/new.txt; stat -c %s shared.txt; ls")
    assert seen.stdout.splitlines()[:3] == ["uploaded", "new", "9"], seen.stderr
    assert "fresh" in seen.stdout.splitlines()[3:]
