"""``raise_on_error``: what a failed command raises."""

from __future__ import annotations

from ..errors import CommandExecutionError, ResourceLimitExceededError
from ..types import ExecResult


def checked(result: ExecResult, command: str, raise_on_error: bool) -> ExecResult:
    """``result``, or (asked to raise, for a non-zero exit) the error that describes it."""
    if not raise_on_error or result.exit_code == 0:
        return result
    if result.limit_exceeded:
        raise ResourceLimitExceededError(
            f"command exited with {result.exit_code} after reaching the sandbox's "
            f"{result.limit_exceeded} limit: {command[:200]}",
            limit=result.limit_exceeded,
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
        )
    raise CommandExecutionError(
        f"command exited with {result.exit_code}: {command[:200]}",
        exit_code=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
    )
