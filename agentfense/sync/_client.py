"""Sync ``SandboxClient``: every RPC of the ``sandbox.v1`` API, blocking."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from os import PathLike
from types import TracebackType
from typing import final

from .._transport import check_not_async, run_blocking
from ..client._client import DEFAULT_CLEANUP_TIMEOUT, AsyncSandboxClient
from ..presets import RuleLike
from ..types import (
    Checkpoint,
    Codebase,
    CommitMode,
    CommitResult,
    ExecResult,
    FileChange,
    FileInfo,
    NetworkConnection,
    ResourceLimits,
    RuntimeType,
    SandboxInfo,
    SessionInfo,
    TLSConfig,
    UploadResult,
)
from ._events import EventStream
from ._stream import ExecStream


@final
class SandboxClient:
    """Low-level blocking client of an AgentFense server (or any ``sandbox.v1`` server).

    ``with SandboxClient(...) as client:``, or call ``close`` when done. The methods
    are those of ``AsyncSandboxClient``, run on agentfense's one private loop thread.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        secure: bool = False,
        cleanup_timeout: float = DEFAULT_CLEANUP_TIMEOUT,
        api_key: str | None = None,
        tls: TLSConfig | None = None,
    ) -> None:
        self._async = AsyncSandboxClient(
            endpoint,
            secure=secure,
            cleanup_timeout=cleanup_timeout,
            api_key=api_key,
            tls=tls,
        )

    @classmethod
    def _wrap(cls, client: AsyncSandboxClient) -> SandboxClient:
        wrapper = cls.__new__(cls)
        wrapper._async = client
        return wrapper

    @property
    def endpoint(self) -> str:
        """The server this client talks to."""
        return self._async.endpoint

    @property
    def secure(self) -> bool:
        """Whether the connection uses TLS."""
        return self._async.secure

    @property
    def tls(self) -> TLSConfig | None:
        """The TLS the connection uses (None: none)."""
        return self._async.tls

    @property
    def cleanup_timeout(self) -> float:
        """How long each call that cleans up on the way out may wait for the server, in seconds."""
        return self._async.cleanup_timeout

    @cleanup_timeout.setter
    def cleanup_timeout(self, seconds: float) -> None:
        self._async.cleanup_timeout = seconds

    @property
    def lacks_file_rpcs(self) -> bool:
        """Whether the server turned down AgentFense's file RPCs (commands are used instead)."""
        return self._async.lacks_file_rpcs

    @lacks_file_rpcs.setter
    def lacks_file_rpcs(self, value: bool) -> None:
        self._async.lacks_file_rpcs = value

    @property
    def lacks_archive_upload(self) -> bool:
        """Whether the server turned down the archive upload (files go one by one instead)."""
        return self._async.lacks_archive_upload

    @lacks_archive_upload.setter
    def lacks_archive_upload(self, value: bool) -> None:
        self._async.lacks_archive_upload = value

    def close(self) -> None:
        """Close the connection; it reopens on the next call."""
        run_blocking(self._async.close)

    def __enter__(self) -> SandboxClient:
        run_blocking(self._async.__aenter__)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run_blocking(self._async.__aexit__, exc_type, exc, tb)

    # -- codebases --------------------------------------------------------------------------

    def create_codebase(self, name: str, owner_id: str = "") -> Codebase:
        """Create an empty codebase named ``name``, owned by ``owner_id``."""
        return run_blocking(self._async.create_codebase, name, owner_id)

    def get_codebase(self, codebase_id: str) -> Codebase:
        """What the server holds of one codebase (``CodebaseNotFoundError`` if none)."""
        return run_blocking(self._async.get_codebase, codebase_id)

    def list_codebases(self, owner_id: str = "", *, page_size: int = 0) -> list[Codebase]:
        """Every codebase (of ``owner_id`` if given), fetched page by page."""
        return run_blocking(self._async.list_codebases, owner_id, page_size=page_size)

    def delete_codebase(self, codebase_id: str) -> None:
        """Delete a codebase and its files."""
        run_blocking(self._async.delete_codebase, codebase_id)

    def upload_file(self, codebase_id: str, file_path: str, content: bytes | str) -> UploadResult:
        """Upload ``content`` as ``file_path`` of the codebase (streamed in chunks)."""
        return run_blocking(self._async.upload_file, codebase_id, file_path, content)

    def upload_local_file(
        self, codebase_id: str, file_path: str, local_path: str | PathLike[str]
    ) -> UploadResult:
        """Upload a local file; a large one is streamed without being read into memory."""
        return run_blocking(self._async.upload_local_file, codebase_id, file_path, local_path)

    def upload_archive(
        self, codebase_id: str, files: Sequence[tuple[str, str | PathLike[str]]]
    ) -> list[UploadResult]:
        """Upload local files (``(file_path, local_path)`` pairs) in one stream."""
        return run_blocking(self._async.upload_archive, codebase_id, files)

    def download_file(self, codebase_id: str, file_path: str) -> bytes:
        """The whole content of a codebase file (the owner's unfiltered view)."""
        return run_blocking(self._async.download_file, codebase_id, file_path)

    def list_files(
        self, codebase_id: str, path: str = "", recursive: bool = False
    ) -> list[FileInfo]:
        """A codebase's entries under ``path`` (all below it with ``recursive``), unfiltered."""
        return run_blocking(self._async.list_files, codebase_id, path, recursive)

    # -- sandboxes --------------------------------------------------------------------------

    def create_sandbox(
        self,
        codebase_id: str,
        *,
        permissions: Iterable[RuleLike] | None = None,
        runtime: RuntimeType | str = RuntimeType.BWRAP,
        image: str | None = None,
        resources: ResourceLimits | None = None,
        labels: Mapping[str, str] | None = None,
        expires_in: float | timedelta | None = None,
        keep_home: bool = False,
        start: bool = False,
        commit: CommitMode | str = CommitMode.AUTO,
        network: Iterable[str] | str | None = None,
    ) -> SandboxInfo:
        """Create a sandbox on a codebase, not started unless ``start``: then started in
        the same call (a sandbox that cannot start is destroyed, and the start's error
        raised). ``expires_in`` (seconds or a ``timedelta``): the server destroys the sandbox
        once that much time has passed. ``commit``: ``"auto"`` or ``"manual"``.
        ``network``: the hosts it may reach (docs/network.md); None: none."""
        return run_blocking(
            self._async.create_sandbox,
            codebase_id,
            permissions=permissions,
            runtime=runtime,
            image=image,
            resources=resources,
            labels=labels,
            expires_in=expires_in,
            keep_home=keep_home,
            start=start,
            commit=commit,
            network=network,
        )

    def get_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """What the server says of one sandbox (``SandboxNotFoundError`` if none)."""
        return run_blocking(self._async.get_sandbox, sandbox_id)

    def list_sandboxes(self, codebase_id: str = "", *, page_size: int = 0) -> list[SandboxInfo]:
        """Every sandbox (of ``codebase_id`` if given), fetched page by page."""
        return run_blocking(self._async.list_sandboxes, codebase_id, page_size=page_size)

    def start_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """Start a sandbox; its state after."""
        return run_blocking(self._async.start_sandbox, sandbox_id)

    def stop_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """Stop a sandbox's processes, committing what they wrote; its state after."""
        return run_blocking(self._async.stop_sandbox, sandbox_id)

    def destroy_sandbox(self, sandbox_id: str) -> None:
        """Destroy a sandbox, committing what it wrote first."""
        run_blocking(self._async.destroy_sandbox, sandbox_id)

    def exec(
        self,
        sandbox_id: str,
        command: str,
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``command`` (``sh -c``) in a running sandbox; CommandTimeoutError on timeout."""
        return run_blocking(
            self._async.exec,
            sandbox_id,
            command,
            stdin=stdin,
            env=env,
            workdir=workdir,
            timeout=timeout,
        )

    def exec_stream(
        self,
        sandbox_id: str,
        command: str,
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> ExecStream:
        """Run ``command`` and stream its output; see ``ExecStream``."""
        check_not_async()
        return ExecStream._create(
            self._async.exec_stream(
                sandbox_id, command, stdin=stdin, env=env, workdir=workdir, timeout=timeout
            )
        )

    # -- a sandbox's files, through its view and permissions (AgentFense extension) ---------

    def read_sandbox_file(self, sandbox_id: str, path: str) -> bytes:
        """A file as the sandbox sees it (``/workspace/...`` or relative to it)."""
        return run_blocking(self._async.read_sandbox_file, sandbox_id, path)

    def write_sandbox_file(self, sandbox_id: str, path: str, content: bytes | str) -> UploadResult:
        """Write a file as the sandbox could (its permissions apply), then commit it."""
        return run_blocking(self._async.write_sandbox_file, sandbox_id, path, content)

    def list_sandbox_files(
        self, sandbox_id: str, path: str = "/workspace", recursive: bool = False
    ) -> list[FileInfo]:
        """What the sandbox sees below ``path``; paths are given as ``/workspace/...``."""
        return run_blocking(self._async.list_sandbox_files, sandbox_id, path, recursive)

    # -- review -----------------------------------------------------------------------------

    def list_changes(
        self, sandbox_id: str, paths: Iterable[str] | str | None = None
    ) -> list[FileChange]:
        """Where the sandbox's files differ from its codebase's, at or below ``paths``."""
        return run_blocking(self._async.list_changes, sandbox_id, paths)

    def diff_changes(
        self,
        sandbox_id: str,
        paths: Iterable[str] | str | None = None,
        *,
        max_bytes: int | None = None,
    ) -> str:
        """The sandbox's changes as a unified diff (``a/``: the codebase, ``b/``: the sandbox)."""
        return run_blocking(self._async.diff_changes, sandbox_id, paths, max_bytes=max_bytes)

    def commit_changes(
        self,
        sandbox_id: str,
        paths: Iterable[str] | str | None = None,
        *,
        overwrite: bool = False,
    ) -> CommitResult:
        """Apply the sandbox's changes at or below ``paths`` (None: all) to its codebase."""
        return run_blocking(self._async.commit_changes, sandbox_id, paths, overwrite=overwrite)

    def discard_changes(
        self, sandbox_id: str, paths: Iterable[str] | str | None = None
    ) -> list[str]:
        """Give the sandbox back its codebase's files at or below ``paths`` (None: all)."""
        return run_blocking(self._async.discard_changes, sandbox_id, paths)

    # -- checkpoints and forks ---------------------------------------------------------------

    def create_checkpoint(self, sandbox_id: str, name: str = "") -> Checkpoint:
        """Capture a manual sandbox's changes (its files, not its processes)."""
        return run_blocking(self._async.create_checkpoint, sandbox_id, name)

    def get_network_log(self, sandbox_id: str, after: int = 0) -> list[NetworkConnection]:
        """The connections the sandbox made through its proxy and the lookups it tried."""
        return run_blocking(self._async.get_network_log, sandbox_id, after)

    def list_checkpoints(self, sandbox_id: str) -> list[Checkpoint]:
        """A sandbox's checkpoints, oldest first."""
        return run_blocking(self._async.list_checkpoints, sandbox_id)

    def restore_checkpoint(self, sandbox_id: str, checkpoint_id: str) -> Checkpoint:
        """Make the sandbox's changes what they were at the checkpoint."""
        return run_blocking(self._async.restore_checkpoint, sandbox_id, checkpoint_id)

    def delete_checkpoint(self, sandbox_id: str, checkpoint_id: str) -> None:
        """Delete a checkpoint (the sandbox's files stay as they are)."""
        run_blocking(self._async.delete_checkpoint, sandbox_id, checkpoint_id)

    def fork_sandbox(self, sandbox_id: str, *, start: bool = True) -> SandboxInfo:
        """A new sandbox like this one whose changes start as a copy of its changes."""
        return run_blocking(self._async.fork_sandbox, sandbox_id, start=start)

    def watch_events(self, sandbox_id: str, *, after: int = 0) -> EventStream:
        """What the sandbox's commands do to its files and what its permissions refuse."""
        check_not_async()
        return EventStream._create(self._async.watch_events(sandbox_id, after=after))

    # -- sessions ---------------------------------------------------------------------------

    def create_session(
        self, sandbox_id: str, *, shell: str = "", env: Mapping[str, str] | None = None
    ) -> SessionInfo:
        """Open a persistent shell in a running sandbox (``shell``: bash if it has one, else sh)."""
        return run_blocking(self._async.create_session, sandbox_id, shell=shell, env=env)

    def get_session(self, session_id: str) -> SessionInfo:
        """What the server says of one session (``SessionNotFoundError`` if none)."""
        return run_blocking(self._async.get_session, session_id)

    def list_sessions(self, sandbox_id: str) -> list[SessionInfo]:
        """Every session of a sandbox."""
        return run_blocking(self._async.list_sessions, sandbox_id)

    def destroy_session(self, session_id: str) -> None:
        """Close a session, killing every process it started."""
        run_blocking(self._async.destroy_session, session_id)

    def session_exec(
        self, session_id: str, command: str, *, timeout: float | None = None
    ) -> ExecResult:
        """Run ``command`` in a session's shell; CommandTimeoutError on timeout."""
        return run_blocking(self._async.session_exec, session_id, command, timeout=timeout)

    def session_exec_stream(
        self, session_id: str, command: str, *, timeout: float | None = None
    ) -> ExecStream:
        """Run ``command`` in a session's shell and stream its output (see ExecStream)."""
        check_not_async()
        return ExecStream._create(
            self._async.session_exec_stream(session_id, command, timeout=timeout)
        )
