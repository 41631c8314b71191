"""Sync ``SessionWrapper``: a persistent shell in a running sandbox (cwd, env, jobs persist)."""

from __future__ import annotations

from types import TracebackType
from typing import final

from .._construction import NoPublicConstructor
from .._transport import check_not_async, run_blocking
from ..client.session import AsyncSessionWrapper
from ..types import ExecResult, SessionInfo, SessionStatus
from ._stream import ExecStream


@final
class SessionWrapper(metaclass=NoPublicConstructor):
    """One shell session, made by ``sandbox.session()``; ``with`` (or ``close``)
    destroys it and its processes. ``cd``, ``export`` and background jobs carry over."""

    _obtained_from = "use `with sandbox.session() as session`"

    def __init__(self, session: AsyncSessionWrapper) -> None:
        self._async = session

    @property
    def id(self) -> str:
        """The session's id."""
        return self._async.id

    @property
    def sandbox_id(self) -> str:
        """The id of the sandbox the session's shell runs in."""
        return self._async.sandbox_id

    @property
    def shell(self) -> str:
        """The shell the session runs (bash where the sandbox has it, else sh, unless named)."""
        return self._async.shell

    @property
    def status(self) -> SessionStatus:
        """The status the server gave when last asked (``refresh()`` asks again)."""
        return self._async.status

    @property
    def info(self) -> SessionInfo:
        """Everything the server said of the session when last asked."""
        return self._async.info

    def exec(
        self, command: str, timeout: float | None = None, raise_on_error: bool = False
    ) -> ExecResult:
        """Run ``command`` in the session's shell and wait for it."""
        return run_blocking(
            self._async.exec, command, timeout=timeout, raise_on_error=raise_on_error
        )

    def exec_stream(self, command: str, *, timeout: float | None = None) -> ExecStream:
        """Stream the command's output: ``with session.exec_stream(cmd) as s: ...``."""
        check_not_async()
        return ExecStream._create(self._async.exec_stream(command, timeout=timeout))

    def refresh(self) -> SessionInfo:
        """Ask the server for the session's state again; also kept as ``info``."""
        return run_blocking(self._async.refresh)

    def close(self) -> None:
        """Destroy the session, killing every process it started; idempotent."""
        run_blocking(self._async.close)

    destroy = close

    def __enter__(self) -> SessionWrapper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run_blocking(self._async.__aexit__, exc_type, exc, tb)
