"""Every session of the server, found by id: built on the sandbox table and the one command
path (``commands``), never on the lifecycle manager."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping

import anyio.abc

from ..errors import (
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SessionClosedError,
    SessionNotFoundError,
)
from ..runtimes.base import WORKSPACE, CommandSpec
from ..types import SessionStatus
from . import shell_protocol as protocol
from ._descriptors import check_headroom
from .commands import Commands
from .execution import OnOutput, Outcome
from .sandbox_table import SandboxTable
from .sessions import Session

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
    def __init__(
        self,
        sandboxes: SandboxTable,
        commands: Commands,
        task_group: Callable[[], anyio.abc.TaskGroup],
        *,
        most_per_sandbox: int,
    ) -> None:
        self._most_per_sandbox = most_per_sandbox
        self._sandboxes = sandboxes
        self._commands = commands
        self._task_group = task_group
        self._sessions: dict[str, Session] = {}

    def get(self, session_id: str) -> Session:
        if not session_id:
            raise InvalidConfigurationError("session_id must not be empty")
        session = self._sessions.get(session_id) if _ID_RE.match(session_id) else None
        if session is None:
            raise SessionNotFoundError(f"session {session_id[:64]!r} not found")
        return session

    def list(self, sandbox_id: str) -> list[Session]:
        record = self._sandboxes.get(sandbox_id)
        found = [s for s in self._sessions.values() if s.sandbox_id == record.id]
        return sorted(found, key=lambda s: (s.created_at, s.id))

    async def create(self, sandbox_id: str, shell: str, env: Mapping[str, str]) -> Session:
        record, handle = self._sandboxes.running(sandbox_id)
        if "\x00" in shell or len(shell) > 4096:
            raise InvalidConfigurationError("shell must be a program name or path without NUL")
        held = [s for s in self._sessions.values() if s.sandbox_id == record.id]
        if sum(s.status is not SessionStatus.CLOSED for s in held) >= self._most_per_sandbox:
            raise ResourceLimitExceededError(
                f"sandbox {record.id} has {self._most_per_sandbox} open sessions, the most "
                "this server allows (max_sessions_per_sandbox); destroy one first"
            )
        check_headroom(f"a new session of sandbox {record.id}")
        argv = shell_argv(shell, handle.session_bash)
        command = CommandSpec(argv, self._commands.env(env), WORKSPACE)
        process = await self._commands.spawn(record, handle, command, shell=shell)
        ident = "ses_" + secrets.token_hex(8)
        session = await Session.open(ident, record.id, process, shell, self._task_group())
        self._sessions[ident] = session
        return session

    async def destroy(self, session_id: str) -> None:
        session = self.get(session_id)
        await session.close()
        self._sessions.pop(session.id, None)

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
        seconds = self._commands.timeout(timeout)
        if session.status is SessionStatus.CLOSED:
            raise SessionClosedError(f"session {session.id} is closed")
        record, handle = self._sandboxes.running(session.sandbox_id)

        async def work() -> Outcome:
            return await session.run(
                command,
                timeout=seconds,
                max_output=self._commands.max_output_bytes,
                on_output=on_output,
            )

        return await self._commands.accounted(record, handle, work)

    async def close_all(self, sandbox_id: str, *, forget: bool) -> None:
        """Close the sandbox's sessions (it stops); ``forget`` them too (it goes away)."""
        for session in [s for s in self._sessions.values() if s.sandbox_id == sandbox_id]:
            await session.close()
            if forget:
                self._sessions.pop(session.id, None)
