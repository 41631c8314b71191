"""Sync ``Sandbox``: one sandbox, from a local project or an existing codebase, to destroy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from types import TracebackType
from typing import final

from .._construction import NoPublicConstructor
from .._transport import check_not_async, run_blocking
from ..client.sandbox import AsyncSandbox
from ..presets import RuleLike
from ..types import (
    Checkpoint,
    CommitMode,
    CommitResult,
    ExecResult,
    FileChange,
    FileInfo,
    NetworkConnection,
    ResourceLimits,
    RuntimeType,
    SandboxInfo,
    SandboxStatus,
    TLSConfig,
)
from ._client import SandboxClient
from ._events import EventStream
from ._stream import ExecStream
from .session import SessionWrapper


@final
class Sandbox(metaclass=NoPublicConstructor):
    """A sandbox on an AgentFense server, for code without an event loop.

    ``with Sandbox.from_local("./project") as sandbox:`` creates a codebase from the
    project, a sandbox on it, starts it, and on exit destroys both. The methods are those of
    ``AsyncSandbox``, run on agentfense's one private loop thread.
    """

    _obtained_from = "use Sandbox.from_local(), from_codebase() or connect()"

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._async = sandbox
        self._client = SandboxClient._wrap(sandbox.client)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_local(
        cls,
        path: str | PathLike[str],
        preset: str | None = "view-only",
        permissions: Sequence[RuleLike] | None = None,
        runtime: RuntimeType = RuntimeType.BWRAP,
        image: str | None = None,
        resources: ResourceLimits | None = None,
        endpoint: str | None = None,
        secure: bool = False,
        owner_id: str | None = None,
        codebase_name: str | None = None,
        ignore_patterns: list[str] | None = None,
        labels: dict[str, str] | None = None,
        auto_start: bool = True,
        keep_home: bool = False,
        *,
        api_key: str | None = None,
        tls: TLSConfig | None = None,
        commit: CommitMode | str = CommitMode.AUTO,
        network: Iterable[str] | str | None = None,
    ) -> Sandbox:
        """Upload the project at ``path`` as a new codebase and create a sandbox on it."""
        return cls._create(
            run_blocking(
                AsyncSandbox.from_local,
                path,
                preset,
                permissions,
                runtime,
                image,
                resources,
                endpoint,
                secure,
                owner_id,
                codebase_name,
                ignore_patterns,
                labels,
                auto_start,
                keep_home=keep_home,
                api_key=api_key,
                tls=tls,
                commit=commit,
                network=network,
            )
        )

    @classmethod
    def from_codebase(
        cls,
        codebase_id: str,
        preset: str | None = "view-only",
        permissions: Sequence[RuleLike] | None = None,
        runtime: RuntimeType = RuntimeType.BWRAP,
        image: str | None = None,
        resources: ResourceLimits | None = None,
        endpoint: str | None = None,
        secure: bool = False,
        labels: dict[str, str] | None = None,
        auto_start: bool = True,
        keep_home: bool = False,
        *,
        api_key: str | None = None,
        tls: TLSConfig | None = None,
        commit: CommitMode | str = CommitMode.AUTO,
        network: Iterable[str] | str | None = None,
    ) -> Sandbox:
        """A new sandbox on an existing codebase (which is kept when the sandbox goes)."""
        return cls._create(
            run_blocking(
                AsyncSandbox.from_codebase,
                codebase_id,
                preset,
                permissions,
                runtime,
                image,
                resources,
                endpoint,
                secure,
                labels,
                auto_start,
                keep_home=keep_home,
                api_key=api_key,
                tls=tls,
                commit=commit,
                network=network,
            )
        )

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        endpoint: str | None = None,
        secure: bool = False,
        *,
        destroy_on_exit: bool = False,
        api_key: str | None = None,
        tls: TLSConfig | None = None,
    ) -> Sandbox:
        """Attach to an existing sandbox. Leaving ``with`` destroys it only if asked."""
        return cls._create(
            run_blocking(
                AsyncSandbox.connect,
                sandbox_id,
                endpoint,
                secure,
                destroy_on_exit=destroy_on_exit,
                api_key=api_key,
                tls=tls,
            )
        )

    # -- state ------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The sandbox's id (``sb_...``)."""
        return self._async.id

    @property
    def codebase_id(self) -> str:
        """The id of the codebase the sandbox shows at ``/workspace``."""
        return self._async.codebase_id

    @property
    def status(self) -> SandboxStatus:
        """The status the server gave when last asked (``refresh()`` asks again)."""
        return self._async.status

    @property
    def info(self) -> SandboxInfo:
        """Everything the server said of the sandbox when last asked."""
        return self._async.info

    @property
    def client(self) -> SandboxClient:
        """The client this sandbox talks through (its ``cleanup_timeout`` is settable)."""
        return self._client

    def start(self) -> Sandbox:
        """Start the sandbox (``from_local`` and ``from_codebase`` do unless told not to)."""
        run_blocking(self._async.start)
        return self

    def stop(self) -> Sandbox:
        """Stop the sandbox's processes, committing what they wrote; ``start()`` runs it again."""
        run_blocking(self._async.stop)
        return self

    def refresh(self) -> SandboxInfo:
        """Ask the server for the sandbox's state again; also kept as ``info``."""
        return run_blocking(self._async.refresh)

    def destroy(self) -> None:
        """Destroy the sandbox (and the codebase ``from_local`` created); idempotent."""
        run_blocking(self._async.destroy)

    def close(self) -> None:
        """Release the connection without destroying anything."""
        run_blocking(self._async.close)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run_blocking(self._async.__aexit__, exc_type, exc, tb)

    # -- commands ---------------------------------------------------------------------------

    def run(
        self,
        command: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        raise_on_error: bool = False,
    ) -> ExecResult:
        """Run ``command`` with ``sh -c`` in the sandbox and wait for it."""
        return run_blocking(
            self._async.run,
            command,
            timeout=timeout,
            env=env,
            workdir=workdir,
            raise_on_error=raise_on_error,
        )

    def exec(
        self,
        command: str,
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
        raise_on_error: bool = False,
    ) -> ExecResult:
        """``run`` with keyword-only options and ``stdin``, text fed to the command."""
        return run_blocking(
            self._async.exec,
            command,
            stdin=stdin,
            env=env,
            workdir=workdir,
            timeout=timeout,
            raise_on_error=raise_on_error,
        )

    def exec_stream(
        self,
        command: str,
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> ExecStream:
        """Stream the command's output: ``with sandbox.exec_stream(cmd) as s: ...``."""
        check_not_async()
        return ExecStream._create(
            self._async.exec_stream(command, stdin=stdin, env=env, workdir=workdir, timeout=timeout)
        )

    def session(
        self, shell: str | None = None, env: Mapping[str, str] | None = None
    ) -> SessionWrapper:
        """A persistent shell, created now: ``with sandbox.session() as s:`` destroys it on
        exit; ``shell`` defaults to bash where the sandbox has it, else sh."""
        return SessionWrapper._create(run_blocking(self._async.session(shell, env).open))

    # -- files (through the sandbox's own view and permissions) -----------------------------

    def read_file_bytes(self, path: str) -> bytes:
        """A file's content, read through the sandbox's view and its permissions."""
        return run_blocking(self._async.read_file_bytes, path)

    def read_file(self, path: str, encoding: str = "utf-8") -> str:
        """A file's content as text (``encoding``), read through the sandbox's view."""
        return run_blocking(self._async.read_file, path, encoding)

    def write_file(self, path: str, content: str | bytes) -> None:
        """Write a file through the sandbox's view and permissions; it lands whole or not at all."""
        run_blocking(self._async.write_file, path, content)

    def list_files(self, path: str = "/workspace", recursive: bool = False) -> list[FileInfo]:
        """The entries of a directory as the sandbox sees it (all below it with ``recursive``)."""
        return run_blocking(self._async.list_files, path, recursive)

    # -- review (docs/review.md) -------------------------------------------------------------

    def changes(self, paths: Iterable[str] | str | None = None) -> list[FileChange]:
        """Where this sandbox's files differ from its codebase's, at or below ``paths``."""
        return run_blocking(self._async.changes, paths)

    def diff(
        self, paths: Iterable[str] | str | None = None, *, max_bytes: int | None = None
    ) -> str:
        """Those changes as a unified diff (``a/``: the codebase, ``b/``: the sandbox)."""
        return run_blocking(self._async.diff, paths, max_bytes=max_bytes)

    def commit(
        self, paths: Iterable[str] | str | None = None, *, overwrite: bool = False
    ) -> CommitResult:
        """Apply the changes at or below ``paths`` (None: all) to the codebase."""
        return run_blocking(self._async.commit, paths, overwrite=overwrite)

    def discard(self, paths: Iterable[str] | str | None = None) -> list[str]:
        """Give this sandbox back the codebase's files at or below ``paths`` (None: all)."""
        return run_blocking(self._async.discard, paths)

    # -- checkpoints and forks (docs/review.md) -----------------------------------------------

    def checkpoint(self, name: str | None = None) -> Checkpoint:
        """Capture this sandbox's changes (``commit="manual"``): its files, not its processes."""
        return run_blocking(self._async.checkpoint, name)

    def restore(self, checkpoint: Checkpoint | str) -> Checkpoint:
        """Make this sandbox's changes what they were at ``checkpoint``."""
        return run_blocking(self._async.restore, checkpoint)

    def list_checkpoints(self) -> list[Checkpoint]:
        """This sandbox's checkpoints, oldest first."""
        return run_blocking(self._async.list_checkpoints)

    def delete_checkpoint(self, checkpoint: Checkpoint | str) -> None:
        """Delete a checkpoint (the sandbox's files stay as they are)."""
        run_blocking(self._async.delete_checkpoint, checkpoint)

    def network_log(self, *, after: int = 0) -> list[NetworkConnection]:
        """Every connection this sandbox made through its proxy, and every lookup it tried,
        oldest first (docs/network.md)."""
        return run_blocking(self._async.network_log, after=after)

    def events(self, *, after: int = 0) -> EventStream:
        """What this sandbox's commands do to its files, and what its permissions refuse:
        ``with sandbox.events() as events: for event in events: ...``."""
        check_not_async()
        return EventStream._create(self._async.events(after=after))

    def fork(self) -> Sandbox:
        """A new, running sandbox like this one, whose changes start as a copy of its own
        (leave it before this one is closed)."""
        return type(self)._create(run_blocking(self._async.fork))
