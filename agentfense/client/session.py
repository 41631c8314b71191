"""``AsyncSessionWrapper``: a persistent shell in a running sandbox (cwd, env, jobs persist)."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

from .._construction import NoPublicConstructor
from .._transport import finishing
from ..types import ExecResult, SessionInfo, SessionStatus
from ._results import checked
from ._stream import ExecStream

if TYPE_CHECKING:
    from ._client import AsyncSandboxClient


@final
class AsyncSessionWrapper(metaclass=NoPublicConstructor):
    """One shell session. ``async with`` (or ``close``) destroys it and its processes.

    Commands run one after another in the same shell, so ``cd``, ``export``, functions and
    background jobs carry over; concurrent ``exec`` calls on one session are serialised by
    the server in the order they arrive.
    """

    _obtained_from = "use `async with sandbox.session() as session`"

    def __init__(self, client: AsyncSandboxClient, info: SessionInfo) -> None:
        self._client = client
        self._info = info
        self._closed = False

    @property
    def id(self) -> str:
        """The session's id."""
        return self._info.id

    @property
    def sandbox_id(self) -> str:
        """The id of the sandbox the session's shell runs in."""
        return self._info.sandbox_id

    @property
    def shell(self) -> str:
        """The shell the session runs (bash where the sandbox has it, else sh, unless named)."""
        return self._info.shell

    @property
    def status(self) -> SessionStatus:
        """The status the server gave when last asked (``refresh()`` asks again)."""
        return self._info.status

    @property
    def info(self) -> SessionInfo:
        """Everything the server said of the session when last asked."""
        return self._info

    async def exec(
        self, command: str, timeout: float | None = None, raise_on_error: bool = False
    ) -> ExecResult:
        """Run ``command`` in the session's shell and wait for it.

        A timeout kills the command's processes and raises ``CommandTimeoutError``; the
        session and its state stay. ``exit N`` ends the session (its status becomes CLOSED).
        """
        result = await self._client.session_exec(self.id, command, timeout=timeout)
        return checked(result, command, raise_on_error)

    def exec_stream(self, command: str, *, timeout: float | None = None) -> ExecStream:
        """Stream the command's output: ``async with session.exec_stream(cmd) as s: ...``."""
        return self._client.session_exec_stream(self.id, command, timeout=timeout)

    async def refresh(self) -> SessionInfo:
        """Ask the server for the session's state again; also kept as ``info``."""
        self._info = await self._client.get_session(self.id)
        return self._info

    async def close(self) -> None:
        """Destroy the session, killing every process it started; idempotent."""
        if self._closed:
            return
        self._closed = True
        with finishing(self._client.cleanup_timeout):
            await self._client.destroy_session(self.id)

    destroy = close

    async def __aenter__(self) -> AsyncSessionWrapper:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class SessionOpener:
    """What ``sandbox.session()`` returns: await it for the session, or ``async with`` it.

    ``async with await sandbox.session() as s`` and ``async with sandbox.session() as s``
    both create the session on entry and destroy it on exit.
    """

    def __init__(
        self,
        client: AsyncSandboxClient,
        sandbox_id: str,
        shell: str | None,
        env: Mapping[str, str] | None,
    ) -> None:
        self._client = client
        self._sandbox_id = sandbox_id
        self._shell = shell
        self._env = env
        self._session: AsyncSessionWrapper | None = None

    async def open(self) -> AsyncSessionWrapper:
        info = await self._client.create_session(
            self._sandbox_id, shell=self._shell or "", env=self._env
        )
        return AsyncSessionWrapper._create(self._client, info)

    def __await__(self) -> Generator[Any, None, AsyncSessionWrapper]:
        return self.open().__await__()

    async def __aenter__(self) -> AsyncSessionWrapper:
        if self._session is not None:
            raise RuntimeError("this sandbox.session() was already entered")
        self._session = await self.open()
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._session is not None
        await self._session.close()
