"""Typed exceptions of the SDK, each carrying the gRPC status code as an int.

Every failure the SDK reports is a :class:`SandboxError`. The mapping from a gRPC status (and
the server's message) to the most specific class is :func:`error_from_status`, a pure function.
"""

from __future__ import annotations

from enum import IntEnum


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

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(self.default_code if code is None else code)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.code))


def _rebuild(cls: type[SandboxError], message: str, code: int) -> SandboxError:
    return cls(message, code=code)


class SandboxNotFoundError(SandboxError):
    default_code = StatusCode.NOT_FOUND


class CodebaseNotFoundError(SandboxError):
    default_code = StatusCode.NOT_FOUND


class SessionNotFoundError(SandboxError):
    default_code = StatusCode.NOT_FOUND


class SandboxNotRunningError(SandboxError):
    default_code = StatusCode.FAILED_PRECONDITION


class SessionClosedError(SandboxError):
    default_code = StatusCode.FAILED_PRECONDITION


class CommandTimeoutError(SandboxError):
    default_code = StatusCode.DEADLINE_EXCEEDED


class CommandExecutionError(SandboxError):
    """A command exited non-zero and the caller asked for ``raise_on_error``."""

    default_code = StatusCode.UNKNOWN

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
    default_code = StatusCode.PERMISSION_DENIED


class ResourceLimitExceededError(SandboxError):
    """A limit was reached: the server's (RESOURCE_EXHAUSTED), or the sandbox's own that
    stopped a command (``limit`` says which: "memory", "pids"; with the command's outcome)."""

    default_code = StatusCode.RESOURCE_EXHAUSTED

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
    default_code = StatusCode.INVALID_ARGUMENT


class ConnectionError(SandboxError):
    """The server could not be reached, or the connection broke mid-call."""

    default_code = StatusCode.UNAVAILABLE


# Servers mark the resource an error is about with one of these words at the start of the
# message ("sandbox sb_x not found"); the SDK's own server always does.
_NOT_FOUND_BY_SUBJECT: dict[str, type[SandboxError]] = {
    "sandbox": SandboxNotFoundError,
    "codebase": CodebaseNotFoundError,
    "session": SessionNotFoundError,
}


def error_from_status(code: int, message: str) -> SandboxError:
    """The typed exception for a gRPC status ``code`` and the server's ``message``."""
    lowered = message.lower()
    cls: type[SandboxError]
    if code == StatusCode.NOT_FOUND:
        first_word = lowered.split(" ", 1)[0]
        cls = _NOT_FOUND_BY_SUBJECT.get(first_word, SandboxError)
    elif code == StatusCode.FAILED_PRECONDITION:
        if "session" in lowered and "closed" in lowered:
            cls = SessionClosedError
        elif "not running" in lowered:
            cls = SandboxNotRunningError
        else:
            cls = SandboxError
    elif code == StatusCode.DEADLINE_EXCEEDED:
        cls = CommandTimeoutError
    elif code in (StatusCode.PERMISSION_DENIED, StatusCode.UNAUTHENTICATED):
        cls = PermissionDeniedError
    elif code == StatusCode.RESOURCE_EXHAUSTED:
        cls = ResourceLimitExceededError
    elif code in (StatusCode.INVALID_ARGUMENT, StatusCode.OUT_OF_RANGE):
        cls = InvalidConfigurationError
    elif code == StatusCode.UNAVAILABLE:
        cls = ConnectionError
    else:
        cls = SandboxError
    return cls(message, code=code)
