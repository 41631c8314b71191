"""Every session of the server, found by id: built on the sandbox table and the one command
path (``commands``), never on the lifecycle manager.

Sessions opened and closed are logged at INFO: like a sandbox, a session holds resources
until it closes (a shell, its processes, a few of the server's descriptors; at most
``max_sessions_per_sandbox`` per sandbox), so what holds them is worth a line. The commands
they run are logged at DEBUG only (``commands``).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import anyio.abc

from ..errors import (
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SessionClosedError,
    SessionNotFoundError,
)
from ..runtimes.base import WORKSPACE, CommandSpec, SandboxHandle
from ..types import SessionStatus
from . import shell_protocol as protocol
from ._descriptors import check_headroom
from .callers import may_see
from .commands import Commands
from .execution import OnOutput, Outcome
from .log_lines import log_event
from .metrics import ServerMetrics
from .quotas import Quotas
from .sandbox_table import SandboxRecord, SandboxTable
from .sessions import Session

_lifecycle = logging.getLogger("agentfense.server.lifecycle")
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
        quotas: Quotas,
        metrics: ServerMetrics,
    ) -> None:
        self._metrics = metrics
        self._quotas = quotas
        self._most_per_sandbox = most_per_sandbox
        self._sandboxes = sandboxes
        self._commands = commands
        self._task_group = task_group
        self._sessions: dict[str, Session] = {}
        self._reported: set[str] = set()  # sessions whose opening is logged, not their close
        self._opening: dict[str, int] = {}  # sandbox id: sessions being opened in it

    def get(self, session_id: str) -> Session:
        if not session_id:
            raise InvalidConfigurationError("session_id must not be empty")
        session = self._sessions.get(session_id) if _ID_RE.match(session_id) else None
        sandbox = self._sandboxes.find(session.sandbox_id) if session is not None else None
        if session is None or sandbox is None or not may_see(sandbox.tenant):
            raise SessionNotFoundError(f"session {session_id[:64]!r} not found")
        return session

    def _held_by(self, tenant: str) -> int:
        """How many sessions the tenant's sandboxes have open."""
        held = 0
        for session in list(self._sessions.values()):
            sandbox = self._sandboxes.find(session.sandbox_id)
            if sandbox is not None and sandbox.tenant == tenant:
                held += session.status is not SessionStatus.CLOSED
        return held

    def open_count(self) -> int:
        """How many sessions are open, in every sandbox."""
        return sum(s.status is not SessionStatus.CLOSED for s in list(self._sessions.values()))

    def _event(self, event: str, session: Session, **more: str | float) -> None:
        self._metrics.lifecycle.labels(event.replace(" ", "_")).inc()
        log_event(
            _lifecycle,
            logging.INFO,
            event,
            session_id=session.id,
            sandbox_id=session.sandbox_id,
            **more,
        )

    def list(self, sandbox_id: str) -> list[Session]:
        record = self._sandboxes.get(sandbox_id)
        found = [s for s in self._sessions.values() if s.sandbox_id == record.id]
        return sorted(found, key=lambda s: (s.created_at, s.id))

    async def create(self, sandbox_id: str, shell: str, env: Mapping[str, str]) -> Session:
        record, handle = self._sandboxes.running(sandbox_id)
        if "\x00" in shell or len(shell) > 4096:
            raise InvalidConfigurationError("shell must be a program name or path without NUL")
        held = [s for s in self._sessions.values() if s.sandbox_id == record.id]
        opening = self._opening.get(record.id, 0)
        if sum(s.status is not SessionStatus.CLOSED for s in held) + opening >= (
            self._most_per_sandbox
        ):
            raise ResourceLimitExceededError(
                f"sandbox {record.id} has {self._most_per_sandbox} open sessions, the most "
                "this server allows (max_sessions_per_sandbox); destroy one first"
            )
        with self._quotas.reserve(record.tenant, "sessions", self._held_by(record.tenant)):
            self._opening[record.id] = opening + 1  # (counted above by calls racing this one)
            try:
                session = await self._open(record, handle, shell, env)
            finally:
                if self._opening[record.id] > 1:
                    self._opening[record.id] -= 1
                else:
                    del self._opening[record.id]
        self._reported.add(session.id)
        self._event("session opened", session, shell=session.shell)
        return session

    async def _open(
        self, record: SandboxRecord, handle: SandboxHandle, shell: str, env: Mapping[str, str]
    ) -> Session:
        """A new session, in the registry when this returns."""
        check_headroom(f"a new session of sandbox {record.id}")
        argv = shell_argv(shell, handle.session_bash)
        command = CommandSpec(argv, self._commands.env(record, env), WORKSPACE)
        process = await self._commands.spawn(record, handle, command, shell=shell)
        ident = "ses_" + secrets.token_hex(8)
        session = await Session.open(ident, record.id, process, shell, self._task_group())
        self._sessions[ident] = session
        return session

    async def _close(self, session: Session, why: str) -> None:
        """Close the session; its line says ``why``, or that its shell had ended (a session
        whose shell exits closes itself, and is reported when the registry next sees it)."""
        if session.status is SessionStatus.CLOSED and session.id in self._reported:
            why = "shell ended"
        await session.close()
        if session.id in self._reported:
            self._reported.discard(session.id)
            ended = session.closed_at or datetime.now(UTC)
            lived = (ended - session.created_at).total_seconds()
            self._event("session closed", session, why=why, lived_seconds=lived)

    async def destroy(self, session_id: str) -> None:
        session = self.get(session_id)
        await self._close(session, "requested")
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

        return await self._commands.accounted(record, handle, work, kind="session")

    async def close_all(self, sandbox_id: str, *, forget: bool) -> None:
        """Close the sandbox's sessions (it stops); ``forget`` them too (it goes away)."""
        for session in [s for s in self._sessions.values() if s.sandbox_id == sandbox_id]:
            await self._close(session, "sandbox stopped" if not forget else "sandbox destroyed")
            if forget:
                self._sessions.pop(session.id, None)
