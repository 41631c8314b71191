"""Nothing a sandbox or a client does stops the server: a sandbox whose destroy fails is
marked and tried again while the others go on; a second server on the same state directory
is refused before it touches anything."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import betterproto
import docker
import pytest

from agentfense import (
    AsyncSandboxClient,
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStatus,
)
from agentfense._proto.sandbox import v1 as pb
from agentfense.client import _rpcs as rpcs
from agentfense.fs._host import remove_tree
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

WRITE = [{"pattern": "**", "permission": "write"}]
M = TypeVar("M", bound=betterproto.Message)
# Generated enum members named through their enum (a bare one is an int to mypy: see _convert).
_PB_READ, _PB_WRITE = pb.Permission(pb.Permission.READ), pb.Permission(pb.Permission.WRITE)
_PB_FILE = pb.PatternType(pb.PatternType.FILE)
_WRITE = "/sandbox.v1.SandboxService/WriteSandboxFile"


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server_process(tmp_path / "own", settings={"expiry_check_interval": "0.2"})
    yield running
    assert running.stop() == 0, running.log()


def _immutable(path: Path, on: bool) -> None:
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


async def _exists(client: AsyncSandboxClient, sandbox_id: str) -> bool:
    try:
        await client.get_sandbox(sandbox_id)
    except SandboxNotFoundError:
        return False
    return True


async def test_a_failing_destroy_of_an_expired_sandbox_never_stops_the_server(
    own_server: ServerProcess,
) -> None:
    async with AsyncSandboxClient(own_server.endpoint) as client:
        other_codebase = await client.create_codebase("other")
        other = await client.start_sandbox(
            (await client.create_sandbox(other_codebase.id, permissions=WRITE)).id
        )
        codebase = await client.create_codebase("doomed")
        await client.upload_file(codebase.id, "keep.txt", b"keep\n")
        doomed = await client.create_sandbox(codebase.id, permissions=WRITE, expires_in=4)
        await client.start_sandbox(doomed.id)
        delta = own_server.state_dir / "deltas" / doomed.id
        _immutable(delta, True)  # its commits fail (EPERM, even for root)
        try:
            with pytest.raises(SandboxError, match="commit"):
                await client.exec(doomed.id, "rm keep.txt; echo late > late.txt")
            with anyio.fail_after(20):
                while (await client.get_sandbox(doomed.id)).status is not SandboxStatus.ERROR:  # noqa: ASYNC110 - the server's state
                    await anyio.sleep(0.2)
            # The server still serves the others, and new sandboxes.
            assert (await client.exec(other.id, "echo alive")).stdout == "alive\n"
            fresh = await client.create_sandbox(other_codebase.id, permissions=WRITE)
            await client.start_sandbox(fresh.id)
            assert (await client.exec(fresh.id, "echo fresh > f; cat f")).stdout == "fresh\n"
            await anyio.sleep(1)
            assert (await client.get_sandbox(doomed.id)).status is SandboxStatus.ERROR
        finally:
            _immutable(delta, False)
        # Tried again: once it can be, destroyed, and what it wrote is not lost.
        with anyio.fail_after(30):
            while await _exists(client, doomed.id):  # noqa: ASYNC110 - the server's state
                await anyio.sleep(0.2)
        assert await client.download_file(codebase.id, "late.txt") == b"late\n"
        assert [f.path for f in await client.list_files(codebase.id)] == ["late.txt"]
        assert (await client.exec(other.id, "echo still")).stdout == "still\n"
    assert own_server.process.poll() is None
    assert "could not be destroyed" in own_server.log()


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        return [line for line in mounts if f" {path}/" in line]


def _serve_again(listen: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFENSE_")}
    return subprocess.run(
        [sys.executable, "-m", "agentfense", "serve", "--listen", listen],
        env={**env, "AGENTFENSE_STATE_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_second_server_on_the_same_state_directory_is_refused_and_touches_nothing(
    own_server: ServerProcess, tmp_path: Path
) -> None:
    async with AsyncSandboxClient(own_server.endpoint) as client:
        codebase = await client.create_codebase("first")
        await client.upload_file(codebase.id, "a.txt", b"a\n")
        sandbox = await client.start_sandbox(
            (await client.create_sandbox(codebase.id, permissions=WRITE)).id
        )
        mounts_before = _mounts_under(own_server.state_dir)
        # On the same socket (which it would have taken over) and on another one.
        for listen in (own_server.endpoint, f"unix:{tmp_path}/second.sock"):
            second = _serve_again(listen, own_server.state_dir)
            assert second.returncode == 125  # (deployment.md)
            lines = second.stderr.strip().splitlines()
            assert lines == [
                f"agentfense serve: state_dir {own_server.state_dir} is in use by another "
                f"agentfense server (pid {own_server.process.pid}); stop it first or choose "
                "another state_dir"
            ], second.stderr
        assert _mounts_under(own_server.state_dir) == mounts_before
        assert not (tmp_path / "second.sock").exists()
        # The first server's sandboxes go on: their view, their processes, their commits.
        result = await client.exec(sandbox.id, "cat a.txt; echo b > b.txt")
        assert result.stdout == "a\n"
        assert await client.download_file(codebase.id, "b.txt") == b"b\n"
        await client.write_sandbox_file(sandbox.id, "c.txt", "c\n")
        assert await client.read_sandbox_file(sandbox.id, "/workspace/c.txt") == b"c\n"
    assert own_server.process.poll() is None


def test_a_busy_socket_is_refused_with_one_line(own_server: ServerProcess) -> None:
    state = Path(tempfile.mkdtemp(prefix="agentfense-second-"))
    try:
        second = _serve_again(own_server.endpoint, state)
    finally:
        remove_tree(state)
    assert second.returncode == 125  # (deployment.md)
    assert second.stderr.strip().splitlines() == [
        f"agentfense serve: cannot listen on {own_server.endpoint}: a server already listens there"
    ], second.stderr
    assert own_server.socket_path.exists()


async def test_a_request_message_over_the_limit_is_refused_before_it_is_buffered(
    own_server: ServerProcess,
) -> None:
    limit = 4 * 1024 * 1024  # max_message_bytes' default
    async with AsyncSandboxClient(own_server.endpoint) as client:
        codebase = await client.create_codebase("big")
        sandbox = await client.start_sandbox(
            (await client.create_sandbox(codebase.id, permissions=WRITE)).id
        )
        with pytest.raises(ResourceLimitExceededError, match="max_message_bytes") as caught:
            await client.exec(sandbox.id, "wc -c", stdin="x" * (limit + 1))
        assert caught.value.code == 8
        assert str(limit) in caught.value.message
        # One message of a stream over the limit, the same.
        transport = await client._channel()

        async def one_big_chunk() -> AsyncIterator[pb.SandboxFileChunk]:
            meta = pb.SandboxFileChunkMetadata(sandbox_id=sandbox.id, path="big.bin")
            yield pb.SandboxFileChunk(metadata=meta)
            yield pb.SandboxFileChunk(data=b"b" * (limit + 1))

        with pytest.raises(ResourceLimitExceededError, match="max_message_bytes"):
            await transport.client_stream(_WRITE, one_big_chunk, pb.UploadResult)
        # The connection goes on; what fits is taken, and large files stream in chunks.
        result = await client.exec(sandbox.id, "wc -c", stdin="x" * (limit // 2))
        assert result.stdout.strip() == str(limit // 2)
        big = bytes(range(256)) * (3 * limit // 256)
        await client.write_sandbox_file(sandbox.id, "big.bin", big)
        assert await client.read_sandbox_file(sandbox.id, "big.bin") == big
        await client.upload_file(codebase.id, "up.bin", big)
        assert await client.download_file(codebase.id, "up.bin") == big


@dataclass(eq=False, repr=False)
class _RawDuration(betterproto.Message):
    seconds: int = betterproto.int64_field(1)


async def _unary_as_built(
    client: AsyncSandboxClient, path: str, request: betterproto.Message, reply: type[M]
) -> M:
    """Sends ``request`` as built, past the client's typed RPC table: these tests send what
    the SDK never would."""
    return await (await client._channel()).unary(path, request, reply)


@dataclass(eq=False, repr=False)
class _RawCreate(betterproto.Message):
    """CreateSandboxRequest with a duration no ``timedelta`` holds."""

    codebase_id: str = betterproto.string_field(1)
    expires_in: _RawDuration = betterproto.message_field(3)  # noqa: RUF009 - how betterproto declares


@dataclass(eq=False, repr=False)
class _RawGet(betterproto.Message):
    """GetSandboxRequest whose string is not UTF-8."""

    sandbox_id: bytes = betterproto.bytes_field(1)


@dataclass(eq=False, repr=False)
class _RawRule(betterproto.Message):
    pattern: str = betterproto.string_field(1)
    type: int = betterproto.int32_field(2)
    permission: int = betterproto.int32_field(3)


@dataclass(eq=False, repr=False)
class _RawRules(betterproto.Message):
    codebase_id: str = betterproto.string_field(1)
    permissions: list[_RawRule] = betterproto.message_field(2)  # noqa: RUF009 - how betterproto declares


async def test_requests_the_server_cannot_honour_get_a_typed_error_never_internal(
    client: AsyncSandboxClient,
) -> None:
    codebase = await client.create_codebase("extremes")
    sandbox = await client.start_sandbox(
        (await client.create_sandbox(codebase.id, permissions=WRITE)).id
    )
    session = await client.create_session(sandbox.id)
    before = {s.id for s in await client.list_sandboxes(codebase.id)}
    rule = pb.PermissionRule(pattern="**", permission=_PB_WRITE)

    def create(**fields: Any) -> pb.CreateSandboxRequest:
        return pb.CreateSandboxRequest(
            **{"codebase_id": codebase.id, "permissions": [rule], **fields}
        )

    def exec_(**fields: Any) -> pb.ExecRequest:
        return pb.ExecRequest(**{"sandbox_id": sandbox.id, "command": "true", **fields})

    many_rules = [
        pb.PermissionRule(pattern=f"f{i}", type=_PB_FILE, permission=_PB_READ) for i in range(4_100)
    ]
    cases: list[tuple[str, betterproto.Message, type[betterproto.Message], str]] = [
        ("CreateSandbox", create(expires_in=timedelta(days=365 * 8000)), pb.Sandbox, "expires_in"),
        ("CreateSandbox", _RawCreate(codebase.id, _RawDuration(2**63 - 1)), pb.Sandbox, "valid"),
        ("CreateSandbox", create(permissions=many_rules), pb.Sandbox, "4096"),
        ("CreateSandbox", create(permissions=many_rules * 3), pb.Sandbox, "4224 fields"),
        ("CreateSandbox", _RawRules(codebase.id, [_RawRule("**", 9, 4)]), pb.Sandbox, "type 9"),
        ("CreateSandbox", create(labels={f"k{i}": "v" for i in range(100)}), pb.Sandbox, "64"),
        ("CreateSandbox", create(labels={"k": "a\x00b"}), pb.Sandbox, "NUL"),
        (
            "CreateSandbox",
            create(image="i\x00", runtime=pb.RuntimeType.DOCKER),
            pb.Sandbox,
            "image",
        ),
        (
            "CreateSandbox",
            create(resources=pb.ResourceLimits(pids_limit=2**62, cpu_quota=2**62)),
            pb.Sandbox,
            "resources",
        ),
        ("GetSandbox", _RawGet(b"sb_\xff\xfe"), pb.Sandbox, "valid GetSandboxRequest"),
        ("Exec", exec_(timeout=timedelta(days=10**6)), pb.ExecResult, "timeout"),
        ("Exec", exec_(command="true #" + "x" * 100_000), pb.ExecResult, "32768"),
        ("Exec", exec_(env={"K": "\x01" * 200_000}), pb.ExecResult, "32768"),
        ("Exec", exec_(env={f"K{i}": "v" for i in range(300)}), pb.ExecResult, "256"),
        ("Exec", exec_(workdir="a/" * 100_000), pb.ExecResult, "4096"),
        ("Exec", exec_(workdir="/tmp/" + "\x01" * 30_000), pb.ExecResult, "4096"),
        (
            "CreateSession",
            pb.CreateSessionRequest(sandbox_id=sandbox.id, env={f"K{i}": "v" for i in range(300)}),
            pb.Session,
            "256",
        ),
        (
            "CreateSession",
            pb.CreateSessionRequest(sandbox_id=sandbox.id, shell="/" + "\x01" * 30_000),
            pb.Session,
            "shell",
        ),
        (
            "ListSandboxFiles",
            pb.ListSandboxFilesRequest(sandbox_id=sandbox.id, path="a/" * 100_000),
            pb.ListFilesResponse,
            "path",
        ),
    ]
    for method, request, reply, words in cases:
        with pytest.raises(InvalidConfigurationError) as caught:
            await _unary_as_built(client, f"/sandbox.v1.SandboxService/{method}", request, reply)
        assert caught.value.code == 3, (method, caught.value)
        assert words in caught.value.message, (method, caught.value.message)
    assert {s.id for s in await client.list_sandboxes(codebase.id)} == before
    # None of it cost the sandbox or its session anything.
    assert (await client.exec(sandbox.id, "echo fine")).stdout == "fine\n"
    assert (await client.session_exec(session.id, "echo fine")).stdout == "fine\n"
    await client.destroy_sandbox(sandbox.id)
    await client.delete_codebase(codebase.id)


async def test_a_start_refused_for_a_reason_the_caller_can_act_on_is_a_failed_precondition(
    client: AsyncSandboxClient,
) -> None:
    engine = docker.from_env()
    vanishing = f"agentfense/vanishing:{os.getpid()}"
    engine.images.get("agentfense/busybox:latest").tag(vanishing)
    codebase = await client.create_codebase("vanishing")
    try:
        sandbox = await client.create_sandbox(
            codebase.id, permissions=WRITE, runtime="docker", image=vanishing
        )
        engine.images.remove(vanishing)  # (only the tag: the image stays for the others)
        with pytest.raises(SandboxError) as caught:
            await client.start_sandbox(sandbox.id)
        assert caught.value.code == 9, caught.value
        assert vanishing in caught.value.message
        assert (await client.get_sandbox(sandbox.id)).status is SandboxStatus.ERROR
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(vanishing)
        for sandbox_info in await client.list_sandboxes(codebase.id):
            await client.destroy_sandbox(sandbox_info.id)
        await client.delete_codebase(codebase.id)


async def test_a_sandbox_made_to_start_at_once_that_cannot_is_not_left(
    client: AsyncSandboxClient,
) -> None:
    """CreateSandbox with ``start``: a sandbox that cannot start (an image with no shell:
    its container stops at once) is destroyed, and the call fails with the start's error."""
    engine = docker.from_env()
    empty = f"agentfense/empty:{os.getpid()}"
    nothing = io.BytesIO()
    with tarfile.open(fileobj=nothing, mode="w"):
        pass  # (an image of no file at all, made here: nothing is pulled)
    engine.api.import_image_from_data(nothing.getvalue(), repository=empty)
    codebase = await client.create_codebase("never-started")
    try:
        with pytest.raises(SandboxError) as caught:
            await client.create_sandbox(
                codebase.id, permissions=WRITE, runtime="docker", image=empty, start=True
            )
        assert caught.value.code == 9, caught.value
        assert "could not start" in caught.value.message
        assert await client.list_sandboxes(codebase.id) == []
    finally:
        engine.images.remove(empty)
        for sandbox_info in await client.list_sandboxes(codebase.id):
            await client.destroy_sandbox(sandbox_info.id)
        await client.delete_codebase(codebase.id)


class _Prebuilt:
    """A request message given as its wire bytes (what a client of any make may send); not a
    betterproto message, but grpclib only calls its ``SerializeToString``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # the protobuf name grpclib calls
        return self.data


async def test_a_message_of_countless_elements_is_refused_before_it_is_decoded(
    client: AsyncSandboxClient,
) -> None:
    codebase = await client.create_codebase("countless")
    rule = bytes(pb.PermissionRule(pattern="a", permission=_PB_READ))
    field = b"\x12" + bytes([len(rule)]) + rule  # permissions (2), one rule
    request = bytes(pb.CreateSandboxRequest(codebase_id=codebase.id)) + field * 300_000
    # Decoded, 300,000 rules would hold the server's event loop for a minute.
    with anyio.fail_after(20), pytest.raises(InvalidConfigurationError, match="4224 fields"):
        await _unary_as_built(
            client,
            rpcs.CREATE_SANDBOX.path,
            cast(betterproto.Message, _Prebuilt(request)),
            pb.Sandbox,
        )
    assert await client.list_sandboxes(codebase.id) == []
    # The most rules a sandbox may have still go through (decoded off the event loop).
    most = [
        pb.PermissionRule(pattern=f"f{i}", type=_PB_FILE, permission=_PB_READ) for i in range(4095)
    ]
    most.append(pb.PermissionRule(pattern="**", permission=_PB_WRITE))
    created = await client._unary(
        rpcs.CREATE_SANDBOX, pb.CreateSandboxRequest(codebase_id=codebase.id, permissions=most)
    )
    assert len(created.permissions) == 4096
    await client.destroy_sandbox(created.id)
    await client.delete_codebase(codebase.id)
