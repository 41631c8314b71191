"""Typed exceptions of the SDK, each carrying the gRPC status code as an int.

Every failure the SDK reports is a ``SandboxError``. Each class has a ``reason``, the
error's kind as it travels on the wire (AgentFense's server sends it with every error, as a
``google.rpc.ErrorInfo`` in the status details). The mapping from a gRPC status to the most
specific class is ``error_from_status``, a pure function: by the reason where the server
sent one, else by the status code and the RPC that failed (a server without the extension);
never by the words of the message.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class StatusCode(IntEnum):
    """gRPC status codes (the numbers are part of the gRPC protocol)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class SandboxError(Exception):
    """Base class of every AgentFense error. ``code`` is the gRPC status code as an int."""

    default_code: int = StatusCode.UNKNOWN
    reason: ClassVar[str] = "SANDBOX_ERROR"

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(self.default_code if code is None else code)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.code))


def _rebuild(cls: type[SandboxError], message: str, code: int) -> SandboxError:
    return cls(message, code=code)


class SandboxNotFoundError(SandboxError):
    """No sandbox of that id (or not one of this client's): NOT_FOUND."""

    default_code = StatusCode.NOT_FOUND
    reason = "SANDBOX_NOT_FOUND"


class CodebaseNotFoundError(SandboxError):
    """No codebase of that id (or not one of this client's): NOT_FOUND."""

    default_code = StatusCode.NOT_FOUND
    reason = "CODEBASE_NOT_FOUND"


class SessionNotFoundError(SandboxError):
    """No session of that id in that sandbox: NOT_FOUND."""

    default_code = StatusCode.NOT_FOUND
    reason = "SESSION_NOT_FOUND"


class SandboxNotRunningError(SandboxError):
    """The sandbox is not running (start it first): FAILED_PRECONDITION."""

    default_code = StatusCode.FAILED_PRECONDITION
    reason = "SANDBOX_NOT_RUNNING"


class SessionClosedError(SandboxError):
    """The session's shell has ended (``exit``, or a stop it could not survive)."""

    default_code = StatusCode.FAILED_PRECONDITION
    reason = "SESSION_CLOSED"


class CommandTimeoutError(SandboxError):
    """The command ran past its ``timeout`` and the server killed its processes."""

    default_code = StatusCode.DEADLINE_EXCEEDED
    reason = "COMMAND_TIMEOUT"


class CommandExecutionError(SandboxError):
    """A command exited non-zero and the caller asked for ``raise_on_error``."""

    default_code = StatusCode.UNKNOWN
    reason = "COMMAND_FAILED"

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        exit_code: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message, code=code)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


class PermissionDeniedError(SandboxError):
    """The sandbox's permission rules refuse the operation on that path."""

    default_code = StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class AuthenticationError(PermissionDeniedError):
    """The call carried no API token, or one the server does not accept: UNAUTHENTICATED.

    (A kind of ``PermissionDeniedError``, which is what such a refusal was before.)"""

    default_code = StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class ResourceLimitExceededError(SandboxError):
    """A limit was reached: the server's (RESOURCE_EXHAUSTED), or the sandbox's own that
    stopped a command (``limit`` says which: "memory", "pids"; with the command's outcome)."""

    default_code = StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_LIMIT"

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        limit: str | None = None,
        exit_code: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message, code=code)
        self.limit = limit
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


class InvalidConfigurationError(SandboxError):
    """A bad argument or setting; the message names it: INVALID_ARGUMENT."""

    default_code = StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class ConnectionError(SandboxError):
    """The server could not be reached, or the connection broke mid-call."""

    default_code = StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


_BY_REASON: dict[str, type[SandboxError]] = {
    cls.reason: cls
    for cls in (
        SandboxError,
        SandboxNotFoundError,
        CodebaseNotFoundError,
        SessionNotFoundError,
        SandboxNotRunningError,
        SessionClosedError,
        CommandTimeoutError,
        CommandExecutionError,
        PermissionDeniedError,
        AuthenticationError,
        ResourceLimitExceededError,
        InvalidConfigurationError,
        ConnectionError,
    )
}
_BY_CODE: dict[int, type[SandboxError]] = {
    StatusCode.DEADLINE_EXCEEDED: CommandTimeoutError,
    StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    StatusCode.UNAUTHENTICATED: AuthenticationError,
    StatusCode.RESOURCE_EXHAUSTED: ResourceLimitExceededError,
    StatusCode.INVALID_ARGUMENT: InvalidConfigurationError,
    StatusCode.OUT_OF_RANGE: InvalidConfigurationError,
    StatusCode.UNAVAILABLE: ConnectionError,
}
# A server without reasons (upstream's): what NOT_FOUND and FAILED_PRECONDITION are about
# follows from the RPC that failed.
_CODEBASE_RPCS = frozenset(
    {
        "GetCodebase",
        "DeleteCodebase",
        "UploadFiles",
        "UploadArchive",
        "DownloadFile",
        "ListFiles",
        "CreateSandbox",
    }
)
_SESSION_RPCS = frozenset({"GetSession", "DestroySession", "SessionExec", "SessionExecStream"})
_RUNNING_SANDBOX_RPCS = frozenset(
    {
        "Exec",
        "ExecStream",
        "CreateSession",
        "ReadSandboxFile",
        "WriteSandboxFile",
        "ListSandboxFiles",
    }
)


def _by_rpc(code: int, rpc: str) -> type[SandboxError] | None:
    if code == StatusCode.NOT_FOUND:
        if rpc in _CODEBASE_RPCS:
            return CodebaseNotFoundError
        if rpc in _SESSION_RPCS:
            return SessionNotFoundError
        return SandboxNotFoundError if rpc else None
    if code == StatusCode.FAILED_PRECONDITION:
        if rpc in _SESSION_RPCS:
            return SessionClosedError
        if rpc in _RUNNING_SANDBOX_RPCS:
            return SandboxNotRunningError
    return None


def error_from_status(code: int, message: str, *, reason: str = "", rpc: str = "") -> SandboxError:
    """The typed exception for a gRPC status: ``code``, the server's ``message``, the
    ``reason`` it sent (if any) and the name of the ``rpc`` that failed (e.g. "Exec")."""
    known = _BY_REASON.get(reason) if reason else _by_rpc(code, rpc)
    cls = known or _BY_CODE.get(code, SandboxError)
    return cls(message, code=code)
