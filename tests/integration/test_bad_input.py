"""Bad input gets its typed error and leaves nothing half-created, on asyncio and trio."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    Codebase,
    CodebaseNotFoundError,
    ConnectionError,
    InvalidConfigurationError,
    PermissionRule,
    ResourceLimitExceededError,
    ResourceLimits,
    RuntimeType,
    SandboxError,
    SandboxInfo,
    SandboxNotFoundError,
)
from agentfense._proto.sandbox import v1 as pb
from agentfense.client import _rpcs as rpcs
from agentfense.client._rpcs import Rep, Req, Unary
from agentfense.testing import ServerProcess

from .conftest import MAX_UPLOAD

pytestmark = pytest.mark.anyio

READ = [{"pattern": "**", "permission": "read"}]
WRITE = [{"pattern": "**", "permission": "write"}]
# Generated enum members named through their enum (a bare one is an int to mypy: see _convert).
_PB_READ, _PB_WRITE = pb.Permission(pb.Permission.READ), pb.Permission(pb.Permission.WRITE)
_PB_UNKNOWN = pb.Permission.try_value(9)  # a level no server knows

Call = Callable[[], Awaitable[object]]


async def _state(client: AsyncSandboxClient) -> tuple[set[str], set[str]]:
    """Every codebase and sandbox id on the server."""
    codebases = {c.id for c in await client.list_codebases()}
    sandboxes = {s.id for s in await client.list_sandboxes()}
    return codebases, sandboxes


async def _refused(call: Call, error: type[Exception], code: int, *words: str) -> SandboxError:
    """``call`` raises exactly ``error`` with ``code`` (and a message naming ``words``)."""
    with anyio.fail_after(20), pytest.raises(SandboxError) as caught:
        await call()
    assert type(caught.value) is error, repr(caught.value)
    assert caught.value.code == code, repr(caught.value)
    for word in words:
        assert word in caught.value.message, repr(caught.value)
    return caught.value


@asynccontextmanager
async def _codebase(client: AsyncSandboxClient) -> AsyncIterator[Codebase]:
    codebase = await client.create_codebase("bad-input")
    await client.upload_file(codebase.id, "keep.txt", b"keep me\n")
    await client.upload_file(codebase.id, "dir/inner.txt", b"inner\n")
    try:
        yield codebase
    finally:
        with anyio.CancelScope(shield=True):
            for sandbox in await client.list_sandboxes(codebase.id):
                with suppress(SandboxNotFoundError):
                    await client.destroy_sandbox(sandbox.id)
            with suppress(CodebaseNotFoundError):
                await client.delete_codebase(codebase.id)


@asynccontextmanager
async def _running(client: AsyncSandboxClient) -> AsyncIterator[SandboxInfo]:
    async with _codebase(client) as codebase:
        sandbox = await client.create_sandbox(codebase.id, permissions=WRITE)
        yield await client.start_sandbox(sandbox.id)


async def _stream_all(client: AsyncSandboxClient, sandbox_id: str, command: str) -> None:
    async with client.exec_stream(sandbox_id, command) as stream:
        async for _ in stream:
            pass


async def _tree(client: AsyncSandboxClient, codebase_id: str) -> list[tuple[str, int]]:
    return [(f.path, f.size) for f in await client.list_files(codebase_id, recursive=True)]


# -- unknown, malformed and empty ids ---------------------------------------------------------

UNKNOWN_CODEBASES = [
    "cb_0000000000000000",
    "cb_xyz",
    "../../etc",
    "cb_" + "f" * 300,
    "\u00e9t\u00e9",
]
UNKNOWN_SANDBOXES = [
    "sb_0000000000000000",
    "sb_xyz",
    "../../etc",
    "sb_" + "f" * 300,
    "\u00e9t\u00e9",
]


async def test_unknown_codebase_ids_are_not_found(client: AsyncSandboxClient) -> None:
    before = await _state(client)
    for unknown in UNKNOWN_CODEBASES:
        calls: list[Call] = [
            partial(client.get_codebase, unknown),
            partial(client.delete_codebase, unknown),
            partial(client.upload_file, unknown, "a.txt", b"data"),
            partial(client.download_file, unknown, "a.txt"),
            partial(client.list_files, unknown),
            partial(client.list_files, unknown, "src", recursive=True),
            partial(client.create_sandbox, unknown, permissions=READ),
        ]
        for call in calls:
            await _refused(call, CodebaseNotFoundError, 5, "codebase", "not found")
        assert await client.list_sandboxes(unknown) == []
    assert await _state(client) == before


async def test_unknown_sandbox_ids_are_not_found(client: AsyncSandboxClient) -> None:
    before = await _state(client)
    for unknown in UNKNOWN_SANDBOXES:
        calls: list[Call] = [
            partial(client.get_sandbox, unknown),
            partial(client.start_sandbox, unknown),
            partial(client.stop_sandbox, unknown),
            partial(client.destroy_sandbox, unknown),
            partial(client.exec, unknown, "true"),
            partial(_stream_all, client, unknown, "true"),
        ]
        for call in calls:
            await _refused(call, SandboxNotFoundError, 5, "sandbox", "not found")
    assert await _state(client) == before


async def test_empty_ids_and_fields_are_invalid(client: AsyncSandboxClient) -> None:
    before = await _state(client)
    calls: list[tuple[Call, str]] = [
        (partial(client.get_codebase, ""), "codebase_id"),
        (partial(client.delete_codebase, ""), "codebase_id"),
        (partial(client.upload_file, "", "a.txt", b"x"), "codebase_id"),
        (partial(client.download_file, "", "a.txt"), "codebase_id"),
        (partial(client.list_files, ""), "codebase_id"),
        (partial(client.create_sandbox, "", permissions=READ), "codebase_id"),
        (partial(client.get_sandbox, ""), "sandbox_id"),
        (partial(client.start_sandbox, ""), "sandbox_id"),
        (partial(client.stop_sandbox, ""), "sandbox_id"),
        (partial(client.destroy_sandbox, ""), "sandbox_id"),
        (partial(client.exec, "", "true"), "sandbox_id"),
        (partial(client.create_codebase, ""), "name"),
        (partial(client.create_codebase, "   "), "name"),
        (partial(client.create_codebase, "a\x00b"), "name"),
        (partial(client.create_codebase, "x" * 257), "name"),
        (partial(client.create_codebase, "ok", "o\x00wner"), "owner_id"),
    ]
    for call, field in calls:
        await _refused(call, InvalidConfigurationError, 3, field)
    assert await _state(client) == before


async def test_empty_or_bad_commands_are_invalid(client: AsyncSandboxClient) -> None:
    async with _running(client) as sandbox:
        for command in ["", "   ", "\n\t", "echo a\x00b"]:
            await _refused(
                partial(client.exec, sandbox.id, command), InvalidConfigurationError, 3, "command"
            )
            await _refused(
                partial(_stream_all, client, sandbox.id, command),
                InvalidConfigurationError,
                3,
                "command",
            )
        with pytest.raises(InvalidConfigurationError):
            await client.exec(sandbox.id, 42)  # type: ignore[arg-type]
        assert (await client.exec(sandbox.id, "echo still fine")).stdout == "still fine\n"


# -- paths and sizes --------------------------------------------------------------------------

TRAVERSALS = [
    "../x",
    "/../../etc/passwd",
    "a/../../b",
    "dir/../../../../tmp/escaped",
    "..",
    "a/..",
    "x\x00y",
    "keep.txt\x00.png",
]


async def test_traversal_paths_are_refused(
    client: AsyncSandboxClient, server: ServerProcess
) -> None:
    async with _codebase(client) as codebase:
        tree = await _tree(client, codebase.id)
        stats = await client.get_codebase(codebase.id)
        codebases_dir = server.state_dir / "codebases"
        host_before = sorted(p.name for p in codebases_dir.iterdir())
        for path in TRAVERSALS:
            await _refused(
                partial(client.upload_file, codebase.id, path, b"evil"),
                InvalidConfigurationError,
                3,
                "file_path",
            )
            await _refused(
                partial(client.download_file, codebase.id, path),
                InvalidConfigurationError,
                3,
                "file_path",
            )
            await _refused(
                partial(client.list_files, codebase.id, path, recursive=True),
                InvalidConfigurationError,
                3,
                "path",
            )
        for path in ["", "/", "//", "./"]:  # the root is not a file
            await _refused(
                partial(client.upload_file, codebase.id, path, b"evil"),
                InvalidConfigurationError,
                3,
                "file_path",
            )
        # Not a file: a directory, a file under a file.
        await _refused(
            partial(client.upload_file, codebase.id, "dir", b"x"),
            InvalidConfigurationError,
            3,
            "directory",
        )
        await _refused(
            partial(client.upload_file, codebase.id, "keep.txt/sub", b"x"),
            InvalidConfigurationError,
            3,
            "not a directory",
        )
        await _refused(
            partial(client.download_file, codebase.id, "dir"),
            InvalidConfigurationError,
            3,
            "directory",
        )
        missing = await _refused(
            partial(client.download_file, codebase.id, "missing.txt"), SandboxError, 5
        )
        assert "missing.txt" in missing.message
        assert await _tree(client, codebase.id) == tree
        assert await client.get_codebase(codebase.id) == stats
        assert sorted(p.name for p in codebases_dir.iterdir()) == host_before
        assert not (server.state_dir / "x").exists()
        assert not await anyio.Path("/tmp/escaped").exists()
        assert await client.download_file(codebase.id, "keep.txt") == b"keep me\n"


async def test_oversized_uploads_leave_nothing(
    client: AsyncSandboxClient, server: ServerProcess
) -> None:
    async with _codebase(client) as codebase:
        tree = await _tree(client, codebase.id)
        stats = await client.get_codebase(codebase.id)
        too_big = b"x" * (MAX_UPLOAD + 1)
        for path in ["big.bin", "new/dir/big.bin", "keep.txt"]:  # new, in new dirs, overwrite
            await _refused(
                partial(client.upload_file, codebase.id, path, too_big),
                ResourceLimitExceededError,
                8,
                "upload limit",
            )

        # A client that announces no size and then sends too much is cut off on the way.
        async def lying() -> AsyncIterator[pb.UploadChunk]:
            yield pb.UploadChunk(
                metadata=pb.UploadChunkMetadata(
                    codebase_id=codebase.id, file_path="lying.bin", total_size=0
                )
            )
            for _ in range(MAX_UPLOAD // (256 * 1024) + 2):
                yield pb.UploadChunk(data=b"y" * 256 * 1024)

        await _refused(partial(client._upload, lying), ResourceLimitExceededError, 8)

        # A size that does not match what was sent, more or less.
        async def mismatched(total: int, sent: int) -> AsyncIterator[pb.UploadChunk]:
            yield pb.UploadChunk(
                metadata=pb.UploadChunkMetadata(
                    codebase_id=codebase.id, file_path="keep.txt", total_size=total
                )
            )
            yield pb.UploadChunk(data=b"z" * sent)

        for total, sent in [(10, 5), (5, 10)]:
            await _refused(
                partial(client._upload, partial(mismatched, total, sent)),
                InvalidConfigurationError,
                3,
                "total_size",
            )

        # Metadata must come first, and only once.
        async def data_first() -> AsyncIterator[pb.UploadChunk]:
            yield pb.UploadChunk(data=b"no metadata")

        await _refused(
            partial(client._upload, data_first), InvalidConfigurationError, 3, "metadata"
        )

        assert await _tree(client, codebase.id) == tree
        assert await client.get_codebase(codebase.id) == stats
        assert await client.download_file(codebase.id, "keep.txt") == b"keep me\n"
        # No temporary file is left behind on the host either.
        assert os.listdir(server.state_dir / "codebases" / codebase.id / "tmp") == []

        # Exactly the limit is fine.
        result = await client.upload_file(codebase.id, "max.bin", too_big[:-1])
        assert result.size == MAX_UPLOAD
        assert (await client.get_codebase(codebase.id)).file_count == stats.file_count + 1


# -- sandbox creation -------------------------------------------------------------------------


async def _raw_create(client: AsyncSandboxClient, request: pb.CreateSandboxRequest) -> object:
    return await client._unary(rpcs.CREATE_SANDBOX, request)


async def test_invalid_sandbox_requests_create_nothing(client: AsyncSandboxClient) -> None:
    async with _codebase(client) as codebase:
        before = await _state(client)
        read_all = pb.PermissionRule(pattern="**", permission=_PB_READ)

        def request(**fields: Any) -> pb.CreateSandboxRequest:
            values: dict[str, Any] = {"codebase_id": codebase.id, "permissions": [read_all]}
            values.update(fields)
            return pb.CreateSandboxRequest(**values)

        # What the SDK refuses before sending anything...
        local: list[tuple[Call, str]] = [
            (partial(client.create_sandbox, codebase.id, permissions=[{"pattern": ""}]), "pattern"),
            (
                lambda: client.create_sandbox(codebase.id, permissions=[PermissionRule("  ")]),
                "pattern",
            ),
            (
                partial(
                    client.create_sandbox,
                    codebase.id,
                    permissions=[{"pattern": "**", "permission": "admin"}],
                ),
                "permission",
            ),
            (partial(client.create_sandbox, codebase.id, permissions=[{"p": 1}]), "keys"),
            (
                partial(client.create_sandbox, codebase.id, permissions=READ, expires_in=-1),
                "expires_in",
            ),
            (
                partial(client.create_sandbox, codebase.id, permissions=READ, runtime="vm"),
                "runtime",
            ),
        ]
        for call, words in local:
            await _refused(call, InvalidConfigurationError, 3, words)
        with pytest.raises(InvalidConfigurationError):
            ResourceLimits(memory_bytes=-1)

        # ... and what the server refuses when another client sends it.
        remote: list[tuple[pb.CreateSandboxRequest, str]] = [
            (request(permissions=[pb.PermissionRule(pattern="", permission=_PB_WRITE)]), "pattern"),
            (request(permissions=[pb.PermissionRule(pattern="**")]), "permission"),
            (
                request(permissions=[pb.PermissionRule(pattern="**", permission=_PB_UNKNOWN)]),
                "permission",
            ),
            (
                request(permissions=[pb.PermissionRule(pattern="a\x00b", permission=_PB_READ)]),
                "NUL",
            ),
            (
                request(
                    permissions=[read_all, pb.PermissionRule(pattern="a/[b", permission=_PB_READ)]
                ),
                "'a/[b'",
            ),
            (
                request(permissions=[pb.PermissionRule(pattern="a/../b", permission=_PB_READ)]),
                "'a/../b'",
            ),
            (
                request(permissions=[pb.PermissionRule(pattern="a//b", permission=_PB_READ)]),
                "'a//b'",
            ),
            (request(expires_in=timedelta(seconds=-5)), "expires_in"),
            (request(runtime=7), "runtime"),
            (request(labels={"": "empty key"}), "labels"),
            (request(labels={"k" * 257: "v"}), "labels"),
            (request(resources=pb.ResourceLimits(memory_bytes=-1)), "memory_bytes"),
            (request(codebase_id=""), "codebase_id"),
        ]
        for message, words in remote:
            await _refused(
                partial(_raw_create, client, message), InvalidConfigurationError, 3, words
            )
        assert await _state(client) == before


async def test_unusable_runtime_options_and_limits_are_refused_and_create_nothing(
    client: AsyncSandboxClient, endpoint: str, project: Path
) -> None:
    async with _codebase(client) as codebase:
        before = await _state(client)
        await _refused(
            partial(
                AsyncSandbox.from_local,
                project,
                preset="agent-safe",
                endpoint=endpoint,
                runtime=RuntimeType.DOCKER,
            ),
            InvalidConfigurationError,
            3,
            "image is required",
        )
        await _refused(
            partial(
                AsyncSandbox.from_local,
                project,
                endpoint=endpoint,
                runtime=RuntimeType.DOCKER,
                image="agentfense/not-built-here:1",
            ),
            SandboxError,
            9,
            "never pulls",
        )
        # Limits too small to run anything are refused the same way.
        await _refused(
            partial(
                client.create_sandbox,
                codebase.id,
                permissions=READ,
                resources=ResourceLimits(memory_bytes=1 << 10),
            ),
            InvalidConfigurationError,
            3,
            "memory_bytes",
        )
        await _refused(
            partial(client.create_sandbox, codebase.id, permissions=READ, runtime="docker"),
            InvalidConfigurationError,
            3,
            "image is required",
        )
        # from_local deleted the codebases it had created before the refusal.
        assert await _state(client) == before


# -- exec -------------------------------------------------------------------------------------


async def test_bad_exec_options_are_invalid(client: AsyncSandboxClient) -> None:
    async with _running(client) as sandbox:
        before = await client.exec(sandbox.id, "ls /workspace /tmp")

        await _refused(
            partial(client.exec, sandbox.id, "true", timeout=-1), InvalidConfigurationError, 3
        )
        for seconds in [-1.0, 10 * 24 * 3600.0]:  # negative, beyond the server's maximum
            raw = pb.ExecRequest(
                sandbox_id=sandbox.id,
                command="touch /workspace/ran",
                timeout=timedelta(seconds=seconds),
            )
            await _refused(
                partial(client._unary, rpcs.EXEC, raw),
                InvalidConfigurationError,
                3,
                "timeout",
            )
        for name in ["1ABC", "A=B", "", "A B", "A-B", "\u00c9T\u00c9", "A\x00"]:
            await _refused(
                partial(client.exec, sandbox.id, "touch /workspace/ran", env={name: "x"}),
                InvalidConfigurationError,
                3,
                "env",
            )
        await _refused(
            partial(client.exec, sandbox.id, "true", env={"OK": "a\x00b"}),
            InvalidConfigurationError,
            3,
            "env",
        )
        await _refused(
            partial(client.exec, sandbox.id, "true", workdir="/tmp\x00x"),
            InvalidConfigurationError,
            3,
            "workdir",
        )
        # A workdir that does not exist (or is a file) is refused at once, naming it.
        for workdir, reason in [
            ("/nonexistent", "No such file or directory"),
            ("no/such/dir", "No such file or directory"),
            ("/workspace/keep.txt", "Not a directory"),
        ]:
            failed = await _refused(
                partial(client.exec, sandbox.id, "touch /workspace/ran", workdir=workdir),
                InvalidConfigurationError,
                3,
                reason,
            )
            assert workdir.rsplit("/", 1)[-1] in failed.message
        # Nothing ran, and the sandbox still works.
        after = await client.exec(sandbox.id, "ls /workspace /tmp")
        assert (after.stdout, after.stderr, after.exit_code) == (before.stdout, "", 0)
        assert "ran" not in after.stdout


# -- local problems ---------------------------------------------------------------------------


async def test_from_local_on_a_missing_path_creates_nothing(
    client: AsyncSandboxClient, endpoint: str, tmp_path: Path
) -> None:
    before = await _state(client)
    (tmp_path / "a-file").write_text("not a directory")
    for path, words in [(tmp_path / "missing", "does not exist"), (tmp_path / "a-file", "")]:
        await _refused(
            partial(AsyncSandbox.from_local, path, preset="read-only", endpoint=endpoint),
            InvalidConfigurationError,
            3,
            words,
        )
    await _refused(
        partial(AsyncSandbox.from_local, tmp_path, preset="no-such-preset", endpoint=endpoint),
        InvalidConfigurationError,
        3,
        "preset",
    )
    assert await _state(client) == before


async def test_a_socket_nobody_listens_on_is_a_connection_error(tmp_path: Path) -> None:
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as bound:  # bound, never listening, then closed
        bound.bind(str(dead))
    with socket.socket() as probe:  # a TCP port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for endpoint in [f"unix:{dead}", f"unix:{tmp_path / 'absent.sock'}", f"127.0.0.1:{port}"]:
        client = AsyncSandboxClient(endpoint)
        try:
            error = await _refused(client.list_codebases, ConnectionError, 14, endpoint)
            assert "cannot reach" in error.message
            await _refused(partial(client.exec, "sb_0000000000000000", "true"), ConnectionError, 14)
        finally:
            await client.close()
        await _refused(
            partial(AsyncSandbox.from_local, tmp_path, endpoint=endpoint), ConnectionError, 14
        )


async def test_bad_page_tokens_and_sizes_are_invalid(client: AsyncSandboxClient) -> None:
    await _bad_pages_refused(client, rpcs.LIST_CODEBASES)
    await _bad_pages_refused(client, rpcs.LIST_SANDBOXES)


async def _bad_pages_refused(client: AsyncSandboxClient, rpc: Unary[Req, Rep]) -> None:
    bad: list[dict[str, Any]] = [
        {"page_token": "garbage!"},
        {"page_token": "Zm9vfGJhcg=="},
        {"page_size": -1},
    ]
    for fields in bad:
        await _refused(
            partial(client._unary, rpc, rpc.request(**fields)),
            InvalidConfigurationError,
            3,
            next(iter(fields)),
        )
