"""Translation of grpclib/asyncio/socket failures into the SDK's typed errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import h2.exceptions
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.metadata import decode_bin_value, decode_grpc_message

from agentfense._error_details import ReasonCodec
from agentfense._proto.sandbox import v1 as pb
from agentfense._repeated_memo import RepeatedMemo
from agentfense._transport._tls import tls_failure
from agentfense.errors import ConnectionError, SandboxError, StatusCode, error_from_status


class BadReply(Exception):
    """A reply whose bytes are not the message its RPC answers with (the sentence says so)."""


class ReplyCodec(ProtoCodec):
    """grpclib's protobuf codec, with a reply that does not decode a :class:`BadReply`:
    betterproto raises ValueError, EOFError and others, its compiled codec RuntimeError.
    A ``Sandbox``'s rules are decoded once per distinct set (``_repeated_memo``)."""

    def __init__(self) -> None:
        super().__init__()
        self._sandbox_rules = RepeatedMemo(3, "permissions")  # Sandbox.permissions

    def decode(self, data: bytes, message_type: type[Any]) -> Any:
        try:
            if message_type is pb.Sandbox:
                decode = super().decode
                return self._sandbox_rules.decode(data, lambda raw: decode(raw, pb.Sandbox))
            return super().decode(data, message_type)
        except (RuntimeError, ValueError, TypeError, OverflowError, IndexError, EOFError) as exc:
            raise BadReply(f"not a valid {message_type.__name__} message ({exc})") from None


def translate(
    exc: BaseException, endpoint: str, path: str = "", lost: str | None = None
) -> SandboxError | None:
    """The SDK error for a transport-level ``exc`` in a call of the RPC at ``path``
    ("/sandbox.v1.SandboxService/Exec"), or ``None`` if ``exc`` is not one; ``lost`` says
    why the connection was lost, when TLS knows (the call saw only a lost connection)."""
    if isinstance(exc, GRPCError):
        reason = exc.details if isinstance(exc.details, str) else ""
        rpc = path.rsplit("/", 1)[-1]
        return error_from_status(int(exc.status.value), exc.message or "", reason=reason, rpc=rpc)
    # asyncio's deadline expiry is a bare TimeoutError; the OS's ETIMEDOUT carries an errno.
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return error_from_status(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    if isinstance(exc, BadReply):
        return ConnectionError(f"the AgentFense server at {endpoint} sent a reply that is {exc}")
    tls = tls_failure(exc, endpoint)
    if tls is None and isinstance(exc, StreamTerminatedError):
        tls = lost
    if tls is not None:
        return ConnectionError(f"cannot reach the AgentFense server at {endpoint}: {tls}")
    if isinstance(
        exc, OSError | StreamTerminatedError | ProtocolError | h2.exceptions.H2Error | EOFError
    ):
        why = str(exc) or type(exc).__name__
        return ConnectionError(f"cannot reach the AgentFense server at {endpoint}: {why}")
    return None


def _status_in_headers(headers: object) -> GRPCError | None:
    try:
        headers_map = dict(headers)  # type: ignore[call-overload]
        status = Status(int(headers_map["grpc-status"]))
    except (TypeError, ValueError, KeyError):
        return None
    text = headers_map.get("grpc-message")
    message = decode_grpc_message(text) if text else None
    packed = headers_map.get("grpc-status-details-bin")
    details = None
    if packed:
        with suppress(ValueError, TypeError):
            details = ReasonCodec().decode(status, message, decode_bin_value(packed.encode()))
    return GRPCError(status, message, details)


@contextmanager
def trailers_only_status(stream: object) -> Iterator[None]:
    """Recover the real status of a trailers-only error response without a content-type.

    grpclib servers send one (e.g. for an unknown method, UNIMPLEMENTED), and grpclib clients
    then report only UNKNOWN "Missing content-type header"; the headers hold the real status.
    """
    try:
        yield
    except GRPCError as exc:
        if exc.status is not Status.UNKNOWN or "content-type" not in (exc.message or ""):
            raise
        headers = getattr(getattr(stream, "_stream", None), "headers", None)
        recovered = _status_in_headers(headers)
        if recovered is None or recovered.status is Status.OK:
            raise
        raise recovered from exc


@contextmanager
def mapped_errors(
    endpoint: str, path: str = "", lost: Callable[[], str | None] | None = None
) -> Iterator[None]:
    """Re-raise transport failures inside the block (a call of the RPC at ``path``) as SDK
    errors; let anything else through. ``lost()`` says why the connection was lost."""
    try:
        yield
    except Exception as exc:
        mapped = translate(exc, endpoint, path, None if lost is None else lost())
        if mapped is None:
            raise
        raise mapped from exc
