"""A request whose bytes are not the message it is sent as (a field of the wrong wire type, a
truncated varint, a field numbered 0), or a client stream out of order (empty, data before
metadata, metadata twice, a chunk that is neither), gets INVALID_ARGUMENT with a sentence,
never UNKNOWN "Internal Server Error"; and the server goes on serving. Each frame is sent raw,
as any client may send it, to a real server over its socket."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.events import SendRequest, listen
from grpclib.exceptions import GRPCError

from agentfense import AsyncSandboxClient
from agentfense._local_token import read_local_token
from agentfense._proto.sandbox import v1 as pb
from agentfense.testing import ServerProcess

pytestmark = pytest.mark.anyio

WRITE = [{"pattern": "**", "permission": "write"}]
_SB = "/sandbox.v1.SandboxService/"
_CB = "/sandbox.v1.CodebaseService/"


class _Raw(CodecBase):
    """Frames sent and received as the bytes they are."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


def _raw_channel(server: ServerProcess) -> Channel:
    """A channel of raw frames to ``server``, with the server's local owner's token."""
    channel = Channel(path=str(server.socket_path), codec=_Raw())
    authorization = f"Bearer {read_local_token(server.endpoint)}"

    async def authorize(event: SendRequest) -> None:
        event.metadata["authorization"] = authorization

    listen(channel, SendRequest, authorize)
    return channel


def _varint(n: int) -> bytes:
    out = b""
    while n > 0x7F:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _ld(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _varint(len(data)) + data


def _vi(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


async def _status(channel: Channel, path: str, frames: list[bytes]) -> tuple[Status, str]:
    """The status and message a call of ``path`` with ``frames`` (unary or client stream) ends
    with."""
    cardinality = Cardinality.UNARY_UNARY if len(frames) == 1 else Cardinality.STREAM_UNARY
    if path.endswith(("UploadFiles", "UploadArchive", "WriteSandboxFile")):
        cardinality = Cardinality.STREAM_UNARY
    with anyio.fail_after(20):
        try:
            async with channel.request(path, cardinality, bytes, bytes) as stream:
                for i, frame in enumerate(frames):
                    await stream.send_message(frame, end=i == len(frames) - 1)
                if not frames:
                    await stream.send_request(end=True)
                await stream.recv_message()
                await stream.recv_trailing_metadata()
        except GRPCError as err:
            return err.status, err.message or ""
    return Status.OK, ""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (grpclib's own channel, to send raw frames; the server is the same)


async def test_malformed_requests_and_streams_out_of_order_are_invalid_arguments(
    client: AsyncSandboxClient, server: ServerProcess
) -> None:
    codebase = await client.create_codebase("malformed")
    sandbox = await client.start_sandbox(
        (await client.create_sandbox(codebase.id, permissions=WRITE)).id
    )
    sid, cid = sandbox.id.encode(), codebase.id.encode()
    write_meta = _ld(1, _ld(1, sid) + _ld(2, b"f.txt"))
    # The rules of the sandbox made above, which the server now knows (and checks no more):
    # the rest of a request carrying them is checked all the same.
    known = bytes(
        pb.CreateSandboxRequest(
            permissions=[
                pb.PermissionRule(
                    "**", pb.PatternType(pb.PatternType.GLOB), pb.Permission(pb.Permission.WRITE)
                )
            ]
        )
    )
    upload_meta = _ld(1, _ld(1, cid) + _ld(2, b"f.txt"))
    cases: list[tuple[str, str, list[bytes], str]] = [
        # The nine a hostile client found answered UNKNOWN, then the rest of the family.
        (
            "timeout as a varint",
            _SB + "Exec",
            [_ld(1, sid) + _ld(2, b"true") + _vi(6, 5)],
            "timeout",
        ),
        ("command as a varint", _SB + "Exec", [_ld(1, sid) + _vi(2, 5)], "command"),
        ("command as fixed32", _SB + "Exec", [_ld(1, sid) + _key(2, 5) + b"abcd"], "command"),
        ("truncated length", _SB + "Exec", [_ld(1, sid) + _key(2, 2) + _varint(1000)], "command"),
        ("truncated varint", _CB + "ListFiles", [b"\x08"], "cut off"),
        ("id as a varint", _SB + "GetSandbox", [_vi(1, 7)], "sandbox_id"),
        ("empty first chunk", _SB + "WriteSandboxFile", [b""], "sets none"),
        ("data before metadata", _SB + "WriteSandboxFile", [_ld(2, b"abc")], "metadata"),
        ("field numbered 0", _CB + "UploadFiles", [b"\n\x01\x00"], "numbered 0"),
        ("bool as bytes", _SB + "ListSandboxFiles", [_ld(1, sid) + _ld(3, b"x")], "recursive"),
        ("truncated fixed64", _SB + "GetSandbox", [_key(9, 1) + b"abc"], "cut off"),
        ("a group", _SB + "GetSandbox", [_key(9, 3)], "wire type 3"),
        ("map entry key as varint", _SB + "Exec", [_ld(1, sid) + _ld(4, _vi(1, 3))], "key"),
        ("rule as a varint", _SB + "CreateSandbox", [_ld(1, cid) + _vi(2, 1)], "permissions"),
        ("rules packed", _SB + "CreateSandbox", [_ld(1, cid) + _ld(2, b"\x01")], "numbered 0"),
        ("known rules, id as a varint", _SB + "CreateSandbox", [known + _vi(1, 7)], "codebase_id"),
        (
            "known rules, a label as a varint",
            _SB + "CreateSandbox",
            [_ld(1, cid) + known + _ld(4, _vi(1, 3))],
            "key",
        ),
        ("known rules, a group", _SB + "CreateSandbox", [known + _key(9, 3)], "wire type 3"),
        ("empty stream", _SB + "WriteSandboxFile", [], "metadata"),
        ("exec stream without a request", _SB + "ExecStream", [], "no request message"),
        ("session stream without a request", _SB + "SessionExecStream", [], "no request message"),
        ("metadata twice", _SB + "WriteSandboxFile", [write_meta, write_meta], "metadata"),
        ("empty later chunk", _SB + "WriteSandboxFile", [write_meta, b""], "sets none"),
        ("upload, empty stream", _CB + "UploadFiles", [], "metadata"),
        ("upload, data first", _CB + "UploadFiles", [_ld(2, b"x")], "metadata"),
        ("upload, metadata twice", _CB + "UploadFiles", [upload_meta, upload_meta], "metadata"),
        ("upload, empty chunk", _CB + "UploadFiles", [upload_meta, b""], "sets none"),
        ("archive, empty stream", _CB + "UploadArchive", [], "codebase_id"),
        ("archive, empty chunk", _CB + "UploadArchive", [b""], "sets none"),
        ("archive, file first", _CB + "UploadArchive", [_ld(2, _ld(1, b"a"))], "codebase_id"),
        ("archive, id twice", _CB + "UploadArchive", [_ld(1, cid), _ld(1, cid)], "header"),
        (
            "archive, size as bytes",
            _CB + "UploadArchive",
            [_ld(1, cid), _ld(2, _ld(2, b"1"))],
            "size",
        ),
    ]
    channel = _raw_channel(server)
    try:
        for label, path, frames, words in cases:
            status, message = await _status(channel, path, frames)
            assert status is Status.INVALID_ARGUMENT, (label, status, message)
            assert words in message, (label, message)
    finally:
        channel.close()
    # Nothing was written, and the server and the sandbox go on serving.
    assert [f.path for f in await client.list_files(codebase.id)] == []
    assert (await client.exec(sandbox.id, "ls; echo fine")).stdout == "fine\n"
    await client.write_sandbox_file(sandbox.id, "ok.txt", b"ok")
    assert await client.read_sandbox_file(sandbox.id, "ok.txt") == b"ok"
    # Well-formed requests using packed numbers, unknown fields and a map still decode.
    channel = _raw_channel(server)
    try:
        request = bytes(pb.ExecRequest(sandbox_id=sandbox.id, command="echo $K", env={"K": "v"}))
        async with channel.request(_SB + "Exec", Cardinality.UNARY_UNARY, bytes, bytes) as st:
            await st.send_message(request + _vi(99, 1) + _ld(98, b"future"), end=True)
            reply = pb.ExecResult().parse(await st.recv_message() or b"")
        assert reply.stdout == "v\n"
    finally:
        channel.close()
    await client.destroy_sandbox(sandbox.id)
    await client.delete_codebase(codebase.id)


async def test_a_nested_message_of_countless_fields_is_refused_before_it_is_decoded(
    client: AsyncSandboxClient, server: ServerProcess
) -> None:
    """A million one-byte fields inside one rule: betterproto would take over a minute on
    them, holding the interpreter every client shares. They are counted, and refused."""
    codebase = await client.create_codebase("nested-flood")
    flood = _ld(1, codebase.id.encode()) + _ld(2, _vi(15, 0) * 1_000_000)
    channel = _raw_channel(server)
    try:
        status, message = await _status(channel, _SB + "CreateSandbox", [flood])
    finally:
        channel.close()
    assert status is Status.INVALID_ARGUMENT, (status, message)
    assert "32768 fields" in message
    assert await client.list_sandboxes(codebase.id) == []
    created = await client.create_sandbox(codebase.id, permissions=WRITE)
    await client.destroy_sandbox(created.id)
    await client.delete_codebase(codebase.id)
