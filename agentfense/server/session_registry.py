"""Every session of the server, found by id, on top of the sandbox manager."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import (
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SandboxError,
    SandboxNotRunningError,
    SessionClosedError,
    SessionNotFoundError,
    StatusCode,
)
from ..runtimes.base import WORKSPACE, CommandSpec, ForkRefused, RuntimeError_, SandboxGone
from ..types import SessionStatus
from . import shell_protocol as protocol
from .execution import OnOutput, Outcome, with_limits
from .sessions import Session

if TYPE_CHECKING:
    from .sandboxes import SandboxManager, SandboxRecord

_ID_RE = re.compile(r"^ses_[0-9a-f]{16}$")
_BASH_NAMES = frozenset({"bash", "/bin/bash", "/usr/bin/bash"})
# No shell named, in a sandbox without a bash of ours: its bash where it has one, else sh.
_ANY_SHELL = (
    "/bin/sh",
    "-c",
    f"command -v bash >/dev/null 2>&1 && exec bash /dev/fd/0 {protocol.FROM_FD}; "
    f"exec sh -s {protocol.FROM_STDIN}",
)


def shell_argv(shell: str, session_bash: str | None) -> tuple[str, ...]:
    """How to start a session's shell (see ``shell_protocol``): bash reads its script
    through a fd of its own, any other shell on its stdin."""
    if not shell or shell in _BASH_NAMES:
        if session_bash is not None:
            return (session_bash, "/dev/fd/0", protocol.FROM_FD)
        if not shell:
            return _ANY_SHELL
    if shell.rsplit("/", 1)[-1] == "bash":
        return (shell, "/dev/fd/0", protocol.FROM_FD)
    return (shell, "-s", protocol.FROM_STDIN)


class SessionRegistry:
    def __init__(self, manager: SandboxManager) -> None:
        self._manager = manager
        self._sessions: dict[str, Session] = {}

    def get(self, session_id: str) -> Session:
        if not session_id:
            raise InvalidConfigurationError("session_id must not be empty")
        session = self._sessions.get(session_id) if _ID_RE.match(session_id) else None
        if session is None:
            raise SessionNotFoundError(f"session {session_id[:64]!r} not found")
        return session

    def list(self, sandbox_id: str) -> list[Session]:
        record = self._manager.get(sandbox_id)
        return sorted(record.sessions.values(), key=lambda s: (s.created_at, s.id))

    async def create(self, sandbox_id: str, shell: str, env: Mapping[str, str]) -> Session:
        record, handle = self._manager.running_handle(sandbox_id)
        if "\x00" in shell or len(shell) > 4096:
            raise InvalidConfigurationError("shell must be a program name or path without NUL")
        argv = shell_argv(shell, handle.session_bash)
        command = CommandSpec(argv, self._manager.command_env(env), WORKSPACE)
        try:
            process = await handle.spawn(command)
        except ForkRefused as exc:
            raise ResourceLimitExceededError(
                f"the sandbox's process limit is reached; {exc}"
            ) from None
        except SandboxGone as exc:
            raise SandboxNotRunningError(f"sandbox {record.id}: {exc}") from None
        except RuntimeError_ as exc:
            if shell:
                raise InvalidConfigurationError(
                    f"shell {shell[:200]!r} cannot be started in the sandbox ({exc})"
                ) from None
            raise SandboxError(str(exc), code=StatusCode.FAILED_PRECONDITION) from None
        ident = "ses_" + secrets.token_hex(8)
        session = await Session.open(ident, record.id, process, shell, self._manager.task_group)
        record.sessions[ident] = session
        self._sessions[ident] = session
        return session

    async def destroy(self, session_id: str) -> None:
        session = self.get(session_id)
        await session.close()
        self._sessions.pop(session.id, None)
        record = self._manager.find(session.sandbox_id)
        if record is not None:
            record.sessions.pop(session.id, None)

    async def exec(
        self,
        session_id: str,
        command: str,
        timeout: float | None,
        on_output: OnOutput | None = None,
    ) -> Outcome:
        session = self.get(session_id)
        if "\x00" in command:
            raise InvalidConfigurationError("command must not contain NUL")
        seconds = self._manager.exec_timeout(timeout)
        if session.status is SessionStatus.CLOSED:
            raise SessionClosedError(f"session {session.id} is closed")
        record = self._manager.get(session.sandbox_id)
        handle = record.handle
        before = handle.limit_events() if handle is not None else {}
        try:
            outcome = await session.run(
                command,
                timeout=seconds,
                max_output=self._manager.max_output_bytes,
                on_output=on_output,
            )
        finally:
            over_limit = await self._manager.commit(record)
        after = handle.limit_events() if handle is not None else {}
        return with_limits(outcome, before, after, disk=over_limit)

    async def close_all(self, record: SandboxRecord, *, forget: bool) -> None:
        """Close the sandbox's sessions (it stops); ``forget`` them too (it goes away)."""
        for session in list(record.sessions.values()):
            await session.close()
            if forget:
                self._sessions.pop(session.id, None)
        if forget:
            record.sessions.clear()
