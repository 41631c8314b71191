"""Every RPC of the low-level ``AsyncSandboxClient`` against a real server, on asyncio and trio."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandboxClient,
    Codebase,
    CodebaseNotFoundError,
    PermissionRule,
    ResourceLimits,
    RuntimeType,
    SandboxError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxStatus,
    SessionClosedError,
    SessionNotFoundError,
    SessionStatus,
)
from agentfense._proto.sandbox import v1 as pb
from agentfense.client import _rpcs as rpcs

from ._procs import host_pids_running, until_running

pytestmark = pytest.mark.anyio

READ = [{"pattern": "**", "permission": "read"}]
WRITE = [{"pattern": "**", "permission": "write"}]


def _owner() -> str:
    return f"owner-{uuid.uuid4().hex}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@asynccontextmanager
async def _codebase(
    client: AsyncSandboxClient, name: str = "test", owner_id: str = ""
) -> AsyncIterator[Codebase]:
    """A fresh codebase, deleted (with its sandboxes) afterwards."""
    codebase = await client.create_codebase(name, owner_id)
    try:
        yield codebase
    finally:
        with anyio.CancelScope(shield=True):
            for sandbox in await client.list_sandboxes(codebase.id):
                with suppress(SandboxNotFoundError):
                    await client.destroy_sandbox(sandbox.id)
            with suppress(CodebaseNotFoundError):
                await client.delete_codebase(codebase.id)


async def _stream_all(client: AsyncSandboxClient, sandbox_id: str, command: str) -> None:
    async with client.exec_stream(sandbox_id, command) as stream:
        async for _ in stream:
            pass


# -- codebases --------------------------------------------------------------------------------


async def test_codebase_create_get_list_delete(client: AsyncSandboxClient) -> None:
    owner = _owner()
    before = datetime.now(UTC)
    created = await client.create_codebase("my project", owner)
    assert created.id.startswith("cb_")
    assert (created.name, created.owner_id) == ("my project", owner)
    assert (created.size, created.file_count) == (0, 0)
    assert created.created_at is not None
    assert created.updated_at is not None
    assert before - timedelta(seconds=5) <= created.created_at <= datetime.now(UTC)
    assert created.updated_at >= created.created_at

    assert await client.get_codebase(created.id) == created
    assert await client.list_codebases(owner) == [created]
    assert created.id in {c.id for c in await client.list_codebases()}

    await client.delete_codebase(created.id)
    with pytest.raises(CodebaseNotFoundError) as missing:
        await client.get_codebase(created.id)
    assert missing.value.code == 5
    assert created.id in missing.value.message
    assert await client.list_codebases(owner) == []
    with pytest.raises(CodebaseNotFoundError):
        await client.delete_codebase(created.id)


async def test_list_codebases_walks_every_page(client: AsyncSandboxClient) -> None:
    owner, other = _owner(), _owner()
    mine = [await client.create_codebase(f"cb{i}", owner) for i in range(5)]
    theirs = await client.create_codebase("other", other)
    try:
        # The client follows next_page_token until the server says there is no more.
        listed = await client.list_codebases(owner, page_size=2)
        assert [c.id for c in listed] == [c.id for c in mine]  # oldest first
        assert await client.list_codebases(owner) == listed
        assert [c.id for c in await client.list_codebases(other, page_size=1)] == [theirs.id]

        # The raw pages: 2 + 2 + 1, the last without a token.
        pages: list[list[str]] = []
        token = ""
        while True:
            reply = await client._unary(
                rpcs.LIST_CODEBASES,
                pb.ListCodebasesRequest(owner_id=owner, page_size=2, page_token=token),
            )
            pages.append([c.id for c in reply.codebases])
            token = reply.next_page_token
            if not token:
                break
        assert pages == [[c.id for c in mine[0:2]], [c.id for c in mine[2:4]], [mine[4].id]]

        # A page that holds everything carries no token.
        reply = await client._unary(
            rpcs.LIST_CODEBASES,
            pb.ListCodebasesRequest(owner_id=owner, page_size=5),
        )
        assert len(reply.codebases) == 5
        assert reply.next_page_token == ""
    finally:
        for codebase in [*mine, theirs]:
            await client.delete_codebase(codebase.id)


async def test_uploads_keep_checksum_size_and_count_true(
    client: AsyncSandboxClient, tmp_path: Path
) -> None:
    async with _codebase(client) as codebase:
        expected: dict[str, bytes] = {}

        async def upload(path: str, data: bytes) -> None:
            result = await client.upload_file(codebase.id, path, data)
            assert result.codebase_id == codebase.id
            assert result.file_path == path
            assert result.size == len(data)
            assert result.checksum == _sha256(data)
            expected[path.lstrip("/")] = data
            info = await client.get_codebase(codebase.id)
            assert info.file_count == len(expected)
            assert info.size == sum(len(d) for d in expected.values())

        await upload("README.md", b"# hello\n")
        await upload("src/pkg/mod.py", "print('h\u00e9llo')\n".encode())
        await upload("empty", b"")
        await upload("binary.bin", bytes(range(256)) * 3)
        # Several upload chunks (256 KiB each) of random bytes.
        await upload("big/random.bin", os.urandom(600 * 1024 + 7))
        # Overwrites: smaller, larger, then emptied. The count stays, the size follows.
        await upload("README.md", b"#")
        await upload("README.md", b"# a much longer readme\n" * 100)
        await upload("binary.bin", b"")
        # A str is uploaded as its UTF-8 bytes.
        text = await client.upload_file(codebase.id, "note.txt", "caf\u00e9")
        assert text.checksum == _sha256("caf\u00e9".encode())
        expected["note.txt"] = "caf\u00e9".encode()

        local = tmp_path / "local.dat"
        local.write_bytes(os.urandom(300 * 1024))
        result = await client.upload_local_file(codebase.id, "from/local.dat", local)
        assert result.size == local.stat().st_size
        assert result.checksum == _sha256(local.read_bytes())
        expected["from/local.dat"] = local.read_bytes()

        info = await client.get_codebase(codebase.id)
        assert info.file_count == len(expected) == 7
        assert info.size == sum(len(d) for d in expected.values())
        assert info.updated_at is not None
        assert info.created_at is not None
        assert info.updated_at > info.created_at
        for path, data in expected.items():
            assert await client.download_file(codebase.id, path) == data
        # A leading slash names the same file.
        assert (
            await client.download_file(codebase.id, "/src/pkg/mod.py") == expected["src/pkg/mod.py"]
        )


async def test_list_files_recursive_and_not(client: AsyncSandboxClient) -> None:
    async with _codebase(client) as codebase:
        for path, data in {
            "README.md": b"readme",
            "src/app.py": b"app = 1\n",
            "src/pkg/mod.py": b"",
            "docs/guide.md": b"guide!",
        }.items():
            await client.upload_file(codebase.id, path, data)

        top = await client.list_files(codebase.id)
        assert [(f.path, f.name, f.is_dir) for f in top] == [
            ("README.md", "README.md", False),
            ("docs", "docs", True),
            ("src", "src", True),
        ]
        assert top[0].size == 6
        assert all(f.modified_at is not None for f in top)
        assert await client.list_files(codebase.id, "/") == top

        src = await client.list_files(codebase.id, "src")
        assert [(f.path, f.is_dir, f.size) for f in src] == [
            ("src/app.py", False, 8),
            ("src/pkg", True, 0),
        ]
        assert await client.list_files(codebase.id, "/src/") == src

        everything = await client.list_files(codebase.id, recursive=True)
        assert [(f.path, f.is_dir) for f in everything] == [
            ("README.md", False),
            ("docs", True),
            ("docs/guide.md", False),
            ("src", True),
            ("src/app.py", False),
            ("src/pkg", True),
            ("src/pkg/mod.py", False),
        ]
        below = await client.list_files(codebase.id, "src", recursive=True)
        assert [f.path for f in below] == ["src/app.py", "src/pkg", "src/pkg/mod.py"]
        # A file's path lists that one file.
        [single] = await client.list_files(codebase.id, "docs/guide.md")
        assert (single.path, single.name, single.is_dir, single.size) == (
            "docs/guide.md",
            "guide.md",
            False,
            6,
        )


# -- sandboxes --------------------------------------------------------------------------------


async def test_sandbox_create_get_list_carry_every_field(client: AsyncSandboxClient) -> None:
    async with _codebase(client) as codebase, _codebase(client) as other:
        labels = {"team": "infra", "purpose": "rpc test", "empty": ""}
        info = await client.create_sandbox(
            codebase.id,
            permissions=[PermissionRule("**", "read")],
            labels=labels,
            runtime="bwrap",
            resources=ResourceLimits(),
        )
        assert info.id.startswith("sb_")
        assert info.codebase_id == codebase.id
        assert info.status is SandboxStatus.PENDING
        assert dict(info.labels) == labels
        assert info.permissions == (PermissionRule("**", "read"),)
        assert info.runtime is RuntimeType.BWRAP
        assert info.image == ""
        # No limit asked: the server's default process limit (default_pids_limit) applies.
        assert info.resources == ResourceLimits(pids_limit=1024)
        assert info.created_at is not None
        assert (info.started_at, info.stopped_at, info.expires_at) == (None, None, None)

        assert await client.get_sandbox(info.id) == info
        elsewhere = await client.create_sandbox(other.id, permissions=WRITE)
        assert [s.id for s in await client.list_sandboxes(codebase.id)] == [info.id]
        assert [s.id for s in await client.list_sandboxes(other.id)] == [elsewhere.id]
        assert {info.id, elsewhere.id} <= {s.id for s in await client.list_sandboxes()}
        # Labels survive the whole life of the sandbox.
        started = await client.start_sandbox(info.id)
        assert dict(started.labels) == labels
        stopped = await client.stop_sandbox(info.id)
        assert dict(stopped.labels) == labels
        assert (await client.list_sandboxes(codebase.id))[0] == stopped


async def test_list_sandboxes_walks_every_page(client: AsyncSandboxClient) -> None:
    async with _codebase(client) as codebase:
        created = [
            (await client.create_sandbox(codebase.id, permissions=READ)).id for _ in range(5)
        ]
        assert [s.id for s in await client.list_sandboxes(codebase.id, page_size=2)] == created
        pages: list[list[str]] = []
        token = ""
        while True:
            reply = await client._unary(
                rpcs.LIST_SANDBOXES,
                pb.ListSandboxesRequest(codebase_id=codebase.id, page_size=2, page_token=token),
            )
            pages.append([s.id for s in reply.sandboxes])
            token = reply.next_page_token
            if not token:
                break
        assert pages == [created[0:2], created[2:4], created[4:]]


async def test_state_machine_pending_running_stopped_running(
    client: AsyncSandboxClient,
) -> None:
    async with _codebase(client) as codebase:
        await client.upload_file(codebase.id, "hello.txt", b"hi\n")
        info = await client.create_sandbox(codebase.id, permissions=READ)
        assert info.status is SandboxStatus.PENDING
        with pytest.raises(SandboxNotRunningError) as not_yet:
            await client.exec(info.id, "true")
        assert not_yet.value.code == 9

        running = await client.start_sandbox(info.id)
        assert running.status is SandboxStatus.RUNNING
        assert running.started_at is not None
        assert running.stopped_at is None
        assert running.created_at is not None
        assert running.started_at >= running.created_at
        assert (await client.get_sandbox(info.id)).status is SandboxStatus.RUNNING
        # Starting a running sandbox changes nothing.
        assert await client.start_sandbox(info.id) == running

        result = await client.exec(
            info.id, "cat hello.txt; cat; echo $X; pwd", stdin="in\n", env={"X": "x"}
        )
        assert (result.stdout, result.stderr) == ("hi\nin\nx\n/workspace\n", "")
        assert result.exit_code == 0
        async with client.exec_stream(info.id, "echo out; echo err >&2; exit 3") as stream:
            chunks = [(c.stream.value, c.data) async for c in stream]
        assert sorted(chunks) == [("stderr", b"err\n"), ("stdout", b"out\n")]
        assert stream.exit_code == 3

        stopped = await client.stop_sandbox(info.id)
        assert stopped.status is SandboxStatus.STOPPED
        assert stopped.started_at == running.started_at
        assert stopped.stopped_at is not None
        assert stopped.stopped_at >= running.started_at
        with pytest.raises(SandboxNotRunningError) as not_running:
            await client.exec(info.id, "true")
        assert not_running.value.code == 9
        with pytest.raises(SandboxNotRunningError):
            await _stream_all(client, info.id, "true")
        # Stopping a stopped sandbox changes nothing.
        assert await client.stop_sandbox(info.id) == stopped

        again = await client.start_sandbox(info.id)
        assert again.status is SandboxStatus.RUNNING
        assert again.started_at is not None
        assert again.started_at > running.started_at
        assert again.stopped_at is None
        assert (await client.exec(info.id, "cat hello.txt")).stdout == "hi\n"

        await client.destroy_sandbox(info.id)
        with pytest.raises(SandboxNotFoundError) as gone:
            await client.get_sandbox(info.id)
        assert gone.value.code == 5
        assert info.id not in {s.id for s in await client.list_sandboxes()}
        with pytest.raises(SandboxNotFoundError):
            await client.destroy_sandbox(info.id)
        with pytest.raises(SandboxNotFoundError):
            await client.exec(info.id, "true")


async def test_a_sandbox_is_created_started_in_one_call(client: AsyncSandboxClient) -> None:
    async with _codebase(client) as codebase:
        await client.upload_file(codebase.id, "hello.txt", b"hi\n")
        info = await client.create_sandbox(codebase.id, permissions=READ, start=True)
        assert info.status is SandboxStatus.RUNNING
        assert info.started_at is not None
        assert await client.get_sandbox(info.id) == info
        assert (await client.exec(info.id, "cat hello.txt")).stdout == "hi\n"
        await client.destroy_sandbox(info.id)


async def test_destroying_a_running_sandbox_kills_its_processes(
    client: AsyncSandboxClient,
) -> None:
    marker = f"1000.{uuid.uuid4().int % 10**9}"
    async with _codebase(client) as codebase:
        info = await client.create_sandbox(codebase.id, permissions=READ)
        await client.start_sandbox(info.id)
        await client.exec(info.id, f"sleep {marker} >/dev/null 2>&1 &")
        await until_running(f"sleep\0{marker}")
        await client.destroy_sandbox(info.id)
        assert host_pids_running(f"sleep\0{marker}") == []


async def test_expires_in_is_honoured(client: AsyncSandboxClient) -> None:
    marker = f"1000.{uuid.uuid4().int % 10**9}"
    async with _codebase(client) as codebase:
        kept = await client.create_sandbox(codebase.id, permissions=READ)
        short = await client.create_sandbox(codebase.id, permissions=READ, expires_in=0.5)
        assert short.created_at is not None
        assert short.expires_at is not None
        assert abs(short.expires_at - short.created_at - timedelta(seconds=0.5)) < timedelta(
            milliseconds=1
        )
        running = await client.create_sandbox(
            codebase.id, permissions=READ, expires_in=timedelta(seconds=3)
        )
        assert (await client.start_sandbox(running.id)).status is SandboxStatus.RUNNING
        await client.exec(running.id, f"sleep {marker} >/dev/null 2>&1 &")
        await until_running(f"sleep\0{marker}")

        with anyio.fail_after(10):
            while True:
                try:
                    await client.get_sandbox(short.id)
                except SandboxNotFoundError:
                    break
                await anyio.sleep(0.1)
        with anyio.fail_after(15):
            while True:
                try:
                    await client.get_sandbox(running.id)
                except SandboxNotFoundError:
                    break
                await anyio.sleep(0.1)
        # An expired running sandbox is destroyed, processes and all.
        assert host_pids_running(f"sleep\0{marker}") == []
        assert [s.id for s in await client.list_sandboxes(codebase.id)] == [kept.id]
        assert (await client.get_sandbox(kept.id)).expires_at is None


async def test_deleting_a_codebase_in_use_is_refused(client: AsyncSandboxClient) -> None:
    async with _codebase(client) as codebase:
        await client.upload_file(codebase.id, "keep.txt", b"keep")
        sandbox = await client.create_sandbox(codebase.id, permissions=READ)
        await client.start_sandbox(sandbox.id)
        for _ in range(2):  # running, then stopped: both still use it
            with pytest.raises(SandboxError) as refused:
                await client.delete_codebase(codebase.id)
            assert refused.value.code == 9
            assert "destroy" in refused.value.message
            assert (await client.get_codebase(codebase.id)).file_count == 1
            assert await client.download_file(codebase.id, "keep.txt") == b"keep"
            await client.stop_sandbox(sandbox.id)
        await client.destroy_sandbox(sandbox.id)
        await client.delete_codebase(codebase.id)
        with pytest.raises(CodebaseNotFoundError):
            await client.get_codebase(codebase.id)


async def test_session_rpcs_create_get_list_exec_stream_destroy(
    client: AsyncSandboxClient,
) -> None:
    async with _codebase(client) as codebase:
        sandbox = await client.create_sandbox(codebase.id, permissions=READ)
        await client.start_sandbox(sandbox.id)
        session = await client.create_session(sandbox.id, env={"GREETING": "hi"})
        assert session.sandbox_id == sandbox.id
        assert session.status is SessionStatus.ACTIVE
        assert session.shell == "bash"
        assert session.created_at is not None
        assert session.closed_at is None
        assert await client.get_session(session.id) == session
        assert [s.id for s in await client.list_sessions(sandbox.id)] == [session.id]

        await client.session_exec(session.id, "cd /tmp && greeting=$GREETING")
        result = await client.session_exec(session.id, "pwd; echo $greeting >&2; exit 5")
        assert (result.stdout, result.stderr, result.exit_code) == ("/tmp\n", "hi\n", 5)
        closed = await client.get_session(session.id)
        assert closed.status is SessionStatus.CLOSED
        assert closed.closed_at is not None
        with pytest.raises(SessionClosedError):
            await client.session_exec(session.id, "true")

        other = await client.create_session(sandbox.id, shell="/bin/sh")
        assert other.shell == "/bin/sh"
        async with client.session_exec_stream(other.id, "echo out; echo err >&2") as stream:
            chunks = [(chunk.stream.value, chunk.data) async for chunk in stream]
        assert sorted(chunks) == [("stderr", b"err\n"), ("stdout", b"out\n")]
        assert stream.exit_code == 0
        await client.destroy_session(other.id)
        with pytest.raises(SessionNotFoundError):
            await client.get_session(other.id)
        with pytest.raises(SessionNotFoundError):
            await client.session_exec("ses_0000000000000000", "ls")
        assert [s.id for s in await client.list_sessions(sandbox.id)] == [session.id]
