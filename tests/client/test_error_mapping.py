"""Errors map by kind (the reason the server sends), else by code and RPC; never by words."""

from __future__ import annotations

import pytest
from grpclib.const import Status
from hypothesis import given
from hypothesis import strategies as st

from agentfense import errors
from agentfense._error_details import ReasonCodec
from agentfense.errors import (
    CodebaseNotFoundError,
    SandboxError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SessionClosedError,
    SessionNotFoundError,
    StatusCode,
    error_from_status,
)

TYPED = [
    cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, SandboxError)
]


def test_every_error_class_has_a_reason_of_its_own() -> None:
    reasons = [cls.reason for cls in TYPED]
    assert len(set(reasons)) == len(reasons), reasons


@pytest.mark.parametrize("cls", TYPED, ids=lambda cls: cls.__name__)
def test_the_reason_on_the_wire_gives_back_the_class(cls: type[SandboxError]) -> None:
    codec = ReasonCodec()
    code = Status(int(cls.default_code))
    details = codec.decode(code, "m", codec.encode(code, "m", cls.reason))
    mapped = error_from_status(int(cls.default_code), "m", reason=details or "", rpc="Exec")
    assert type(mapped) is cls


def test_the_reason_wins_over_the_words_and_the_rpc() -> None:
    # The words say "session ... closed" and the RPC is a session's; the server says which.
    mapped = error_from_status(
        StatusCode.FAILED_PRECONDITION,
        "session ses_1 is closed",
        reason=SandboxNotRunningError.reason,
        rpc="SessionExec",
    )
    assert type(mapped) is SandboxNotRunningError
    generic = error_from_status(
        StatusCode.FAILED_PRECONDITION, "sandbox sb_1 is not running", reason="SANDBOX_ERROR"
    )
    assert type(generic) is SandboxError


@pytest.mark.parametrize(
    ("code", "rpc", "expected"),
    [
        (StatusCode.NOT_FOUND, "GetSandbox", SandboxNotFoundError),
        (StatusCode.NOT_FOUND, "CreateSandbox", CodebaseNotFoundError),
        (StatusCode.NOT_FOUND, "DownloadFile", CodebaseNotFoundError),
        (StatusCode.NOT_FOUND, "SessionExec", SessionNotFoundError),
        (StatusCode.NOT_FOUND, "CreateSession", SandboxNotFoundError),
        (StatusCode.FAILED_PRECONDITION, "Exec", SandboxNotRunningError),
        (StatusCode.FAILED_PRECONDITION, "SessionExecStream", SessionClosedError),
        (StatusCode.FAILED_PRECONDITION, "DeleteCodebase", SandboxError),
        (StatusCode.NOT_FOUND, "", SandboxError),
    ],
)
def test_without_a_reason_the_rpc_says_what_the_code_is_about(
    code: int, rpc: str, expected: type[SandboxError]
) -> None:
    # (words that would point elsewhere: they are not read)
    assert type(error_from_status(code, "codebase x not found", rpc=rpc)) is expected


def test_an_unknown_reason_maps_by_code_only() -> None:
    mapped = error_from_status(StatusCode.NOT_FOUND, "gone", reason="FUTURE_KIND", rpc="Exec")
    assert type(mapped) is SandboxError
    assert mapped.code == StatusCode.NOT_FOUND


@given(st.binary(max_size=300))
def test_unreadable_details_are_ignored(data: bytes) -> None:
    reason = ReasonCodec().decode(Status.NOT_FOUND, "m", data)
    assert reason is None or isinstance(reason, str)
