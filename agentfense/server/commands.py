"""Running a command in a sandbox: the one path of Exec, ExecStream, SessionExec and
SessionExecStream (and of a session's shell, which is a command too).

- ``spawn``: start it, with the one translation of a runtime's failures into the SDK's
  errors, and the one retry: when the sandbox's process limit is full of what earlier
  commands left running, those leftovers are killed (the handle knows which) and the start
  is tried once more.
- ``accounted``: run the work, then commit what the sandbox wrote in a ``finally`` (a
  command cut short by its timeout or its caller has written all the same), and mark the
  outcome with the resource limit that struck meanwhile; count it in the metrics and log it
  (at DEBUG: one line per command).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .. import _timeouts as timeouts
from ..errors import (
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SandboxError,
    SandboxNotRunningError,
    StatusCode,
)
from ..runtimes.base import (
    BASE_ENV,
    WORKSPACE,
    BadWorkdir,
    CommandSpec,
    ForkRefused,
    Process,
    RuntimeError_,
    SandboxGone,
    SandboxHandle,
)
from .config import ServerConfig
from .execution import OnOutput, Outcome, run_to_completion, with_limits
from .log_lines import log_event
from .metrics import (
    CANCELLED,
    ERROR,
    EXIT_NONZERO,
    EXIT_ZERO,
    TIMEOUT,
    ServerMetrics,
)
from .network.proxy import PROXY_ENV
from .sandbox_table import SandboxRecord

_log = logging.getLogger("agentfense.server.commands")

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Commit = Callable[[SandboxRecord], Awaitable[bool]]  # whether a write met the delta limit


@dataclass(frozen=True, slots=True)
class ExecParams:
    command: str
    stdin: bytes = b""
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = ""
    timeout: float | None = None


class Commands:
    """Starts and accounts for every command of the server's sandboxes."""

    def __init__(self, config: ServerConfig, commit: Commit, metrics: ServerMetrics) -> None:
        self._config = config
        self._commit = commit
        self._metrics = metrics

    @property
    def max_output_bytes(self) -> int:
        return self._config.max_output_bytes

    def timeout(self, timeout: float | None) -> float:
        """The seconds a command may run (the policy: ``agentfense._timeouts``)."""
        return timeouts.effective(timeout, self._config.default_timeout, self._config.max_timeout)

    @staticmethod
    def env(record: SandboxRecord, extra: Mapping[str, str]) -> dict[str, str]:
        """The base environment of the sandbox (with its proxy's variables when it has a
        network) with ``extra`` (checked) over it."""
        env = dict(BASE_ENV)
        if record.network.enabled:
            env.update(PROXY_ENV)
        for name, value in extra.items():
            if not _ENV_NAME_RE.match(name):
                raise InvalidConfigurationError(f"env name {name[:64]!r} is not a valid name")
            if "\x00" in value:
                raise InvalidConfigurationError(f"env {name} must not contain NUL")
            env[name] = value
        return env

    async def spawn(
        self, record: SandboxRecord, handle: SandboxHandle, command: CommandSpec, *, shell: str = ""
    ) -> Process:
        """Start ``command`` (a session's named ``shell``, if given)."""
        try:
            try:
                return await handle.spawn(command)
            except ForkRefused:
                # The process limit is full of what earlier commands left running (a fork
                # bomb in the background): kill those so the sandbox stays usable, once.
                if not await handle.kill_leftovers():
                    raise
            return await handle.spawn(command)
        except BadWorkdir as exc:
            raise InvalidConfigurationError(
                f"workdir {command.cwd!r} cannot be used in the sandbox ({exc})"
            ) from None
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

    async def accounted(
        self,
        record: SandboxRecord,
        handle: SandboxHandle,
        work: Callable[[], Awaitable[Outcome]],
        *,
        kind: str,
    ) -> Outcome:
        """``work``'s outcome, with what the sandbox wrote committed after it, whatever
        happened, and the limit that struck meanwhile. ``kind`` (``exec`` or ``session``)
        labels it in the metrics."""
        before = handle.limit_events()
        connections = record.network_log
        seen = connections.last_seq if connections is not None else 0
        began = anyio.current_time()
        try:
            try:
                outcome = await work()
            finally:
                over_limit = await self._commit(record)
        except Exception:
            self._account(record, kind, ERROR, None, anyio.current_time() - began)
            raise
        except BaseException:  # (the caller's cancellation)
            self._account(record, kind, CANCELLED, None, anyio.current_time() - began)
            raise
        outcome = with_limits(outcome, before, handle.limit_events(), disk=over_limit)
        if connections is not None and connections.last_seq > seen:
            denied = tuple(connections.denied_after(seen))
            outcome = dataclasses.replace(outcome, network_denied=denied)
        said = TIMEOUT if outcome.timed_out else EXIT_NONZERO if outcome.exit_code else EXIT_ZERO
        self._account(record, kind, said, outcome, anyio.current_time() - began)
        return outcome

    def _account(
        self, record: SandboxRecord, kind: str, said: str, outcome: Outcome | None, seconds: float
    ) -> None:
        self._metrics.execs.labels(kind, said).inc()
        self._metrics.exec_seconds.labels(kind).observe(seconds)
        log_event(
            _log,
            logging.DEBUG,
            "command finished",
            sandbox_id=record.id,
            kind=kind,
            outcome=said,
            exit_code=outcome.exit_code if outcome is not None else None,
            limit=(outcome.limit_exceeded or None) if outcome is not None else None,
            seconds=seconds,
        )

    async def exec(
        self,
        record: SandboxRecord,
        handle: SandboxHandle,
        params: ExecParams,
        on_output: OnOutput | None = None,
    ) -> Outcome:
        """Run a plain command (``sh -c``) to its end."""
        if not params.command.strip():
            raise InvalidConfigurationError("command must not be empty")
        if "\x00" in params.command:
            raise InvalidConfigurationError("command must not contain NUL")
        command = CommandSpec(
            ("/bin/sh", "-c", params.command),
            self.env(record, params.env),
            _workdir(params.workdir),
        )
        timeout = self.timeout(params.timeout)

        async def work() -> Outcome:
            process = await self.spawn(record, handle, command)
            return await run_to_completion(
                process,
                stdin=params.stdin,
                timeout=timeout,
                max_output=self._config.max_output_bytes,
                on_output=on_output,
            )

        return await self.accounted(record, handle, work, kind="exec")


def _workdir(workdir: str) -> str:
    if "\x00" in workdir:
        raise InvalidConfigurationError("workdir must not contain NUL")
    if not workdir:
        return WORKSPACE
    return workdir if workdir.startswith("/") else str(Path(WORKSPACE) / workdir)
