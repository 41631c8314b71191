"""Reviewing a sandbox's changes before they reach its codebase (``commit="manual"``), on a
real server: commands leave the codebase alone, the changes survive stop and start, are
listed and shown as a diff, committed by path (a second sandbox's commit of the same file is
a conflict that keeps both versions), discarded, and dropped with the sandbox."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    ChangeKind,
    CommitConflict,
    CommitMode,
    CommitResult,
    EntryType,
    InvalidConfigurationError,
    Sandbox,
    SandboxClient,
    SandboxError,
    SandboxNotFoundError,
)
from agentfense.errors import StatusCode
from agentfense.fanout import open_forks
from agentfense.fs import codebase_lock
from agentfense.testing import ServerProcess

pytestmark = pytest.mark.anyio


async def _codebase(client: AsyncSandboxClient) -> str:
    codebase = await client.create_codebase("review", "tester")
    await client.upload_file(codebase.id, "src/app.py", "print('hello')\n")
    await client.upload_file(codebase.id, "README.md", "# demo\n")
    await client.upload_file(codebase.id, "data.bin", bytes(range(256)))
    return codebase.id


async def _manual(codebase_id: str, endpoint: str) -> AsyncSandbox:
    return await AsyncSandbox.from_codebase(
        codebase_id, preset="development", endpoint=endpoint, commit="manual"
    )


async def test_a_manual_sandbox_keeps_its_changes_until_committed(
    client: AsyncSandboxClient, endpoint: str
) -> None:
    codebase_id = await _codebase(client)
    async with await _manual(codebase_id, endpoint) as sandbox:
        assert sandbox.info.commit_mode is CommitMode.MANUAL
        assert (await client.get_sandbox(sandbox.id)).commit_mode is CommitMode.MANUAL
        await sandbox.run(
            "printf 'print(\"bye\")\\n' > src/app.py && rm README.md && mkdir docs"
            " && echo guide > docs/guide.md && printf '\\0\\1' > data.bin",
            raise_on_error=True,
        )
        # The command ended: nothing reached the codebase.
        assert await client.download_file(codebase_id, "src/app.py") == b"print('hello')\n"
        assert await client.download_file(codebase_id, "README.md") == b"# demo\n"
        changes = {c.path: c for c in await sandbox.changes()}
        assert {p: c.kind for p, c in changes.items()} == {
            "src/app.py": ChangeKind.MODIFIED,
            "README.md": ChangeKind.DELETED,
            "docs": ChangeKind.ADDED,
            "docs/guide.md": ChangeKind.ADDED,
            "data.bin": ChangeKind.MODIFIED,
        }
        assert changes["docs"].type is EntryType.DIRECTORY
        assert changes["docs/guide.md"].size == 6
        # They survive a stop and a start.
        await sandbox.stop()
        await sandbox.start()
        assert len(await sandbox.changes()) == 5
        assert (await sandbox.run("cat src/app.py")).stdout == 'print("bye")\n'
        diff = await sandbox.diff()
        assert "diff --git a/src/app.py b/src/app.py" in diff
        assert "-print('hello')\n+print(\"bye\")\n" in diff
        assert "deleted file mode 100644\n--- a/README.md\n+++ /dev/null\n" in diff
        assert "new file mode 100644\n--- /dev/null\n+++ b/docs/guide.md\n" in diff
        assert "Binary files a/data.bin and b/data.bin differ" in diff
        assert await sandbox.diff("/workspace/docs") == (
            "diff --git a/docs/guide.md b/docs/guide.md\nnew file mode 100644\n"
            "--- /dev/null\n+++ b/docs/guide.md\n@@ -0,0 +1 @@\n+guide\n"
        )
        cut = await sandbox.diff(max_bytes=60)
        assert cut.endswith("[diff truncated: ask for fewer paths, or a larger max_bytes]\n")
        # Committed by path: the rest stays.
        result = await sandbox.commit(["docs/guide.md", "src"])
        assert set(result.applied) == {"docs", "docs/guide.md", "src/app.py"}
        assert result.conflicts == ()
        assert await client.download_file(codebase_id, "docs/guide.md") == b"guide\n"
        assert {c.path for c in await sandbox.changes()} == {"README.md", "data.bin"}
        # Discarded: the sandbox sees the codebase's file again.
        assert await sandbox.discard("README.md") == ["README.md"]
        assert (await sandbox.run("cat README.md")).stdout == "# demo\n"
        assert [c.path for c in await sandbox.changes()] == ["data.bin"]
    # Destroyed: what was left uncommitted is gone with it.
    assert await client.download_file(codebase_id, "data.bin") == bytes(range(256))


async def test_two_manual_sandboxes_changing_one_file_conflict(
    client: AsyncSandboxClient, endpoint: str
) -> None:
    codebase_id = await _codebase(client)
    async with (
        await _manual(codebase_id, endpoint) as first,
        await _manual(codebase_id, endpoint) as second,
    ):
        await first.run("echo first > README.md")
        await second.run("echo second > README.md && echo new > NEW.md")
        assert (await first.commit()).applied == ("README.md",)
        result = await second.commit()
        assert result.applied == ("NEW.md",)
        assert [c.path for c in result.conflicts] == ["README.md"]
        assert isinstance(result.conflicts[0], CommitConflict)
        assert "changed it since" in result.conflicts[0].reason
        # Both versions stay reachable, the codebase's and the second sandbox's.
        assert await client.download_file(codebase_id, "README.md") == b"first\n"
        assert await second.read_file("README.md") == "second\n"
        assert "-first\n+second\n" in await second.diff("README.md")
        # The second sandbox may still win, when asked to by name.
        assert (await second.commit("README.md", overwrite=True)).applied == ("README.md",)
        assert await client.download_file(codebase_id, "README.md") == b"second\n"


async def test_an_auto_sandbox_commits_after_each_command(
    client: AsyncSandboxClient, endpoint: str
) -> None:
    codebase_id = await _codebase(client)
    async with await AsyncSandbox.from_codebase(
        codebase_id, preset="development", endpoint=endpoint
    ) as sandbox:
        assert sandbox.info.commit_mode is CommitMode.AUTO
        await sandbox.run("echo auto > README.md")
        assert await client.download_file(codebase_id, "README.md") == b"auto\n"
        assert await sandbox.changes() == []
        assert await sandbox.commit() == CommitResult()


async def test_bad_review_requests_are_refused(client: AsyncSandboxClient, endpoint: str) -> None:
    codebase_id = await _codebase(client)
    with pytest.raises(InvalidConfigurationError, match="commit must be 'auto' or 'manual'"):
        await client.create_sandbox(codebase_id, commit="later")
    async with await _manual(codebase_id, endpoint) as sandbox:
        with pytest.raises(InvalidConfigurationError, match="not under /workspace"):
            await sandbox.changes("/etc/passwd")
        with pytest.raises(InvalidConfigurationError, match=r"\.\."):
            await sandbox.commit("../outside")
        with pytest.raises(InvalidConfigurationError, match="max_bytes"):
            await sandbox.diff(max_bytes=0)
        with pytest.raises(InvalidConfigurationError, match="at most 4096"):
            await sandbox.changes([f"f{i}" for i in range(4097)])
        assert await sandbox.commit([]) == CommitResult()
    for call in (client.list_changes, client.commit_changes, client.discard_changes):
        with pytest.raises(SandboxNotFoundError):
            await call("sb_0000000000000000")


def test_the_sync_mirror_reviews_too(endpoint: str, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    with Sandbox.from_local(
        tmp_path, preset="development", endpoint=endpoint, commit="manual"
    ) as sandbox:
        sandbox.run("echo two > a.txt")
        assert [c.path for c in sandbox.changes()] == ["a.txt"]
        assert "-one\n+two\n" in sandbox.diff()
        assert sandbox.commit().applied == ("a.txt",)
        with SandboxClient(endpoint) as client:
            assert client.download_file(sandbox.codebase_id, "a.txt") == b"two\n"
            assert client.list_changes(sandbox.id) == []
        sandbox.run("rm a.txt")
        assert sandbox.discard() == ["a.txt"]
        assert sandbox.read_file("a.txt") == "two\n"


async def test_checkpoints_give_back_the_files_not_the_processes(
    client: AsyncSandboxClient, endpoint: str
) -> None:
    codebase_id = await _codebase(client)
    async with await _manual(codebase_id, endpoint) as sandbox:
        await sandbox.run("echo one > README.md && mkdir -p a/b && echo x > a/b/c")
        checkpoint = await sandbox.checkpoint("first")
        assert (checkpoint.name, checkpoint.entries, checkpoint.size) == ("first", 4, 6)
        assert checkpoint.sandbox_id == sandbox.id
        session = await sandbox.session()
        await session.exec("cd /workspace/a/b; (while :; do sleep 0.05; done) & looping=$!")
        await sandbox.run("echo two > README.md && rm a/b/c && echo new > new.txt")
        assert (await sandbox.restore(checkpoint)).id == checkpoint.id
        shown = await sandbox.run("cat README.md a/b/c; ls new.txt", raise_on_error=False)
        assert shown.stdout == "one\nx\n"
        assert "new.txt" in shown.stderr
        # What runs goes on running, where it was.
        still = await session.exec("kill -0 $looping && echo running; pwd; cat c")
        assert still.stdout == "running\n/workspace/a/b\nx\n"
        await session.close()
        assert {c.path for c in await sandbox.changes()} == {"README.md", "a", "a/b", "a/b/c"}
        assert await client.download_file(codebase_id, "README.md") == b"# demo\n"
        # Restored more than once, and listed, and deleted.
        second = await sandbox.checkpoint()
        await sandbox.run("rm -r a")
        await sandbox.restore(checkpoint.id)
        assert (await sandbox.run("cat a/b/c")).stdout == "x\n"
        assert [c.id for c in await sandbox.list_checkpoints()] == [checkpoint.id, second.id]
        await sandbox.delete_checkpoint(checkpoint)
        with pytest.raises(SandboxError, match="not found") as caught:
            await sandbox.restore(checkpoint)
        assert caught.value.code == StatusCode.NOT_FOUND
        assert [c.id for c in await sandbox.list_checkpoints()] == [second.id]
    async with await AsyncSandbox.from_codebase(
        codebase_id, preset="development", endpoint=endpoint
    ) as auto:
        with pytest.raises(SandboxError, match="commit='manual'") as caught:
            await auto.checkpoint()
        assert caught.value.code == StatusCode.FAILED_PRECONDITION


async def test_forks_start_from_their_parents_changes_then_go_their_own_way(
    client: AsyncSandboxClient, endpoint: str
) -> None:
    codebase_id = await _codebase(client)
    async with await _manual(codebase_id, endpoint) as parent:
        await parent.run("echo parent > README.md && rm data.bin")
        async with open_forks(parent, 2) as forks:
            fork_ids = {fork.id for fork in forks}
            for fork in forks:
                assert fork.info.commit_mode is CommitMode.MANUAL
                assert fork.info.permissions == parent.info.permissions
                assert await fork.read_file("README.md") == "parent\n"
                assert {c.path for c in await fork.changes()} == {"README.md", "data.bin"}
            await forks[0].run("echo zero > README.md")
            await forks[1].run("echo one > README.md && echo mine > only-one.txt")
            assert await parent.read_file("README.md") == "parent\n"
            assert await forks[0].read_file("README.md") == "zero\n"
            assert "only-one.txt" not in {c.path for c in await forks[0].changes()}
            # The better one lands.
            result = await forks[1].commit()
            assert set(result.applied) == {"README.md", "data.bin", "only-one.txt"}
        listed = {info.id for info in await client.list_sandboxes(codebase_id)}
        assert not listed & fork_ids, "the forks are gone with the block"
        assert await client.download_file(codebase_id, "README.md") == b"one\n"
        # The parent's own change now conflicts with what the fork committed.
        conflicts = (await parent.commit()).conflicts
        assert [c.path for c in conflicts] == ["README.md"]


def test_the_sync_mirror_checkpoints_and_forks(endpoint: str, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    with Sandbox.from_local(
        tmp_path, preset="development", endpoint=endpoint, commit="manual"
    ) as sandbox:
        sandbox.run("echo two > a.txt")
        checkpoint = sandbox.checkpoint()
        sandbox.run("echo three > a.txt")
        with sandbox.fork() as child:
            assert child.read_file("a.txt") == "three\n"
        sandbox.restore(checkpoint)
        assert sandbox.read_file("a.txt") == "two\n"
        assert sandbox.list_checkpoints() == [checkpoint]


async def test_an_upload_never_lands_between_a_commit_s_check_and_its_rename(
    server: ServerProcess, endpoint: str
) -> None:
    """A commit checks what the codebase holds, then renames its changes in: an upload that
    landed in between was overwritten, the path reported applied with no conflict (a hostile
    tester's finding). Both hold the codebase's lock: while something else holds it, neither
    an upload nor a commit changes the codebase; once it is let go, both go on."""
    async with AsyncSandboxClient(endpoint) as client:
        codebase_id = await _codebase(client)
        files = server.state_dir / "codebases" / codebase_id / "files"
        async with await _manual(codebase_id, endpoint) as sandbox:
            await sandbox.run("echo sandbox > README.md")
            held, release = threading.Event(), threading.Event()

            def hold() -> None:
                with codebase_lock.writing(files):
                    held.set()
                    release.wait(30)

            done: list[str] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, hold)
                await anyio.to_thread.run_sync(held.wait)

                async def upload() -> None:
                    await client.upload_file(codebase_id, "src/app.py", "uploaded\n")
                    done.append("upload")

                async def commit() -> None:
                    done.append(f"commit {(await sandbox.commit()).applied}")

                tg.start_soon(upload)
                tg.start_soon(commit)
                await anyio.sleep(1)
                assert done == [], "the codebase changed while its lock was held"
                assert (files / "src/app.py").read_text() == "print('hello')\n"
                assert (files / "README.md").read_text() == "# demo\n"
                release.set()
            assert sorted(done) == ["commit ('README.md',)", "upload"]
            assert (files / "README.md").read_text() == "sandbox\n"
            assert (files / "src/app.py").read_text() == "uploaded\n"


async def test_modes_are_the_sandbox_s_through_commit_fork_and_restore(
    server: ServerProcess, endpoint: str
) -> None:
    """The permission filesystem applied a umask of its own over the sandbox's: under
    ``umask 0``, a new directory was 0755 and a file 0644; a committed, forked or restored
    0777 directory came out 0755 (a hostile tester's finding)."""
    async with AsyncSandboxClient(endpoint) as client:
        codebase_id = await _codebase(client)
        files = server.state_dir / "codebases" / codebase_id / "files"
        async with await _manual(codebase_id, endpoint) as sandbox:
            made = await sandbox.run(
                "umask 0 && mkdir open && touch open/f && umask 027 && mkdir closed "
                "&& touch closed/f && chmod 1777 open && stat -c '%a %n' open open/f closed "
                "closed/f"
            )
            assert made.stdout.splitlines() == [
                "1777 open",
                "666 open/f",
                "750 closed",
                "640 closed/f",
            ], made.stderr
            checkpoint = await sandbox.checkpoint()
            async with await sandbox.fork() as child:
                forked = await child.run("stat -c '%a %n' open open/f closed closed/f")
                assert forked.stdout == made.stdout
            await sandbox.run("chmod 700 open closed && rm open/f")
            await sandbox.restore(checkpoint)
            restored = await sandbox.run("stat -c '%a %n' open open/f closed closed/f")
            assert restored.stdout == made.stdout
            # The server's own files stay its own (its fs process runs under a umask of 0):
            # only the sandbox's entries have the modes the sandbox gave them.
            delta = server.state_dir / "deltas" / sandbox.id
            shared = [
                path
                for path in delta.rglob("*")
                if "upper" not in path.relative_to(delta).parts and path.lstat().st_mode & 0o022
            ]
            assert shared == [], shared
            result = await sandbox.commit()
            assert "open" in result.applied
            assert not result.conflicts
            assert await sandbox.changes() == []
        modes = {
            rel: oct(os.stat(files / rel).st_mode & 0o7777)
            for rel in ("open", "open/f", "closed", "closed/f")
        }
        assert modes == {
            "open": "0o1777",
            "open/f": "0o666",
            "closed": "0o750",
            "closed/f": "0o640",
        }


async def test_uploads_waiting_for_a_codebase_hold_up_no_one_else(
    server: ServerProcess, endpoint: str
) -> None:
    """Uploads waited for a codebase's lock in worker threads: forty of them, while a long
    commit held it, took every thread the server shares, and another codebase's upload, a
    listing, another sandbox's command waited for the commit (a hostile tester's finding).
    They now wait on the event loop."""
    async with AsyncSandboxClient(endpoint) as client:
        busy, other = await _codebase(client), await _codebase(client)
        files = server.state_dir / "codebases" / busy / "files"
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with codebase_lock.writing(files):
                held.set()
                release.wait(60)

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, hold)
            await anyio.to_thread.run_sync(held.wait)
            for index in range(60):
                tg.start_soon(client.upload_file, busy, f"waiting/{index}", "w\n")
            await anyio.sleep(0.5)
            try:
                with anyio.fail_after(10):  # (while the lock is still held)
                    await client.upload_file(other, "free.txt", "free\n")
                    assert {f.path for f in await client.list_files(other)} >= {"free.txt"}
            finally:
                release.set()
        listed = await client.list_files(busy, "waiting")
        assert len(listed) == 60  # (and those that waited went in, all of them)


@pytest.mark.parametrize("commit_mode", ["auto", "manual"])
async def test_names_of_one_file_share_one_copy_in_the_codebase(
    server: ServerProcess, endpoint: str, commit_mode: str
) -> None:
    """A file the sandbox gave several names was copied into the codebase once per name: a
    file of 100 MB with 31 names took 3 GB of it (a hostile tester's finding). Its names
    now share one copy there, as they share one file in the sandbox."""
    async with AsyncSandboxClient(endpoint) as client:
        codebase_id = await _codebase(client)
        files = server.state_dir / "codebases" / codebase_id / "files"
        sandbox = await AsyncSandbox.from_codebase(
            codebase_id, preset="development", endpoint=endpoint, commit=commit_mode
        )
        async with sandbox:
            await sandbox.run(
                "head -c 1000000 /dev/urandom > big && for i in 1 2 3 4; do ln big big$i; done",
                raise_on_error=True,
            )
            if commit_mode == "manual":
                result = await sandbox.commit()
                assert {"big", "big1", "big4"} <= set(result.applied)
            after = await sandbox.run("cat big >> big3; stat -c %h big; cmp big big1 || true")
            assert after.stdout.splitlines()[0] == "5"  # (still one file in the sandbox)
        names = ["big", *(f"big{i}" for i in range(1, 5))]
        inodes = {os.stat(files / name).st_ino for name in names}
        assert len(inodes) == 1, "a copy per name"
        assert os.stat(files / "big").st_nlink == 5
