"""``AsyncSandbox``: one sandbox, from a local project or an existing codebase, to destroy."""

from __future__ import annotations

import contextlib
import getpass
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TypeVar, final

import anyio
import anyio.lowlevel

from .._blocking import run_sync
from .._construction import NoPublicConstructor
from .._transport import finishing
from ..errors import (
    CommandTimeoutError,
    InvalidConfigurationError,
    SandboxError,
    SandboxNotFoundError,
    StatusCode,
)
from ..presets import RuleLike, resolve_permissions
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
from ..utils import ProjectFile, scan_project
from . import _files
from ._client import AsyncSandboxClient
from ._events import EventStream
from ._results import checked
from ._stream import ExecStream
from .session import SessionOpener

log = logging.getLogger("agentfense")
T = TypeVar("T")

UPLOAD_CONCURRENCY = 8
CREATE_TIMEOUT = 60.0  # how long a create RPC may hold up a cancellation of its caller


@final
class AsyncSandbox(metaclass=NoPublicConstructor):
    """A sandbox on an AgentFense server, usable from asyncio and trio alike.

    ``async with await AsyncSandbox.from_local("./project") as sandbox:`` creates a codebase
    from the project, a sandbox on it, starts it, and on exit destroys the sandbox and deletes
    the codebase it created.
    """

    _obtained_from = "use AsyncSandbox.from_local(), from_codebase() or connect()"

    def __init__(
        self,
        client: AsyncSandboxClient,
        info: SandboxInfo,
        *,
        owns_client: bool,
        owns_sandbox: bool,
        owned_codebase_id: str | None = None,
    ) -> None:
        self._client = client
        self._info = info
        self._owns_client = owns_client
        self._owns_sandbox = owns_sandbox
        self._owned_codebase_id = owned_codebase_id
        self._closed = False

    # -- construction -----------------------------------------------------------------------

    @classmethod
    async def from_local(
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
    ) -> AsyncSandbox:
        """Upload the project at ``path`` as a new codebase and create a sandbox on it.

        ``owner_id`` defaults to the local user's name (``"default"`` where there is none):
        servers may require one (the upstream server refuses a codebase without it), and a
        stable owner groups one user's codebases for listings and per-owner limits.
        ``api_key`` and ``tls``: as for ``AsyncSandboxClient``. ``commit="manual"``: the
        sandbox's writes reach the codebase only through ``commit()`` (docs/review.md).
        ``network``: the hosts it may reach ("pypi.org", "*.pythonhosted.org",
        "github.com:443"); None: none (docs/network.md)."""
        rules = resolve_permissions(preset, permissions)
        root = Path(path)
        scan = await run_sync(lambda: scan_project(root, ignore_patterns))
        name = codebase_name or await run_sync(lambda: root.resolve().name)
        for skipped in scan.skipped:
            log.warning("not uploading %s: %s", skipped.rel_path, skipped.reason)
        client = AsyncSandboxClient(endpoint, secure=secure, api_key=api_key, tls=tls)
        codebase_id: str | None = None
        sandbox_id: str | None = None
        try:
            owner = owner_id if owner_id else await run_sync(default_owner)
            codebase = await _created(client.create_codebase(name or "project", owner))
            codebase_id = codebase.id
            total = len(scan.files)
            log.info("uploading %d files from %s to %s", total, root, codebase_id)
            await _upload_project(client, codebase.id, scan.files)
            info = await _created(
                client.create_sandbox(
                    codebase.id,
                    permissions=rules,
                    runtime=runtime,
                    image=image,
                    resources=resources,
                    labels=labels,
                    keep_home=keep_home,
                    start=auto_start,
                    commit=commit,
                    network=network,
                )
            )
            sandbox_id = info.id
            await _cancellation_point()
        except BaseException:
            with finishing(client.cleanup_timeout):
                if sandbox_id is not None:
                    await _quietly(client.destroy_sandbox(sandbox_id))
                if codebase_id is not None:
                    await _quietly(client.delete_codebase(codebase_id))
                await client.close()
            raise
        return cls._create(
            client, info, owns_client=True, owns_sandbox=True, owned_codebase_id=codebase_id
        )

    @classmethod
    async def from_codebase(
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
    ) -> AsyncSandbox:
        """A new sandbox on an existing codebase (which is kept when the sandbox goes)."""
        rules = resolve_permissions(preset, permissions)
        client = AsyncSandboxClient(endpoint, secure=secure, api_key=api_key, tls=tls)
        sandbox_id: str | None = None
        try:
            info = await _created(
                client.create_sandbox(
                    codebase_id,
                    permissions=rules,
                    runtime=runtime,
                    image=image,
                    resources=resources,
                    labels=labels,
                    keep_home=keep_home,
                    start=auto_start,
                    commit=commit,
                    network=network,
                )
            )
            sandbox_id = info.id
            await _cancellation_point()
        except BaseException:
            with finishing(client.cleanup_timeout):
                if sandbox_id is not None:
                    await _quietly(client.destroy_sandbox(sandbox_id))
                await client.close()
            raise
        return cls._create(client, info, owns_client=True, owns_sandbox=True)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        endpoint: str | None = None,
        secure: bool = False,
        *,
        destroy_on_exit: bool = False,
        api_key: str | None = None,
        tls: TLSConfig | None = None,
    ) -> AsyncSandbox:
        """Attach to an existing sandbox. Leaving ``async with`` destroys it only if asked."""
        client = AsyncSandboxClient(endpoint, secure=secure, api_key=api_key, tls=tls)
        try:
            info = await client.get_sandbox(sandbox_id)
        except BaseException:
            with finishing(client.cleanup_timeout):
                await client.close()
            raise
        return cls._create(client, info, owns_client=True, owns_sandbox=destroy_on_exit)

    # -- state ------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The sandbox's id (``sb_...``)."""
        return self._info.id

    @property
    def codebase_id(self) -> str:
        """The id of the codebase the sandbox shows at ``/workspace``."""
        return self._info.codebase_id

    @property
    def status(self) -> SandboxStatus:
        """The status the server gave when last asked (``refresh()`` asks again)."""
        return self._info.status

    @property
    def info(self) -> SandboxInfo:
        """Everything the server said of the sandbox when last asked."""
        return self._info

    @property
    def client(self) -> AsyncSandboxClient:
        """The client this sandbox talks through (its ``cleanup_timeout`` is settable)."""
        return self._client

    async def start(self) -> AsyncSandbox:
        """Start the sandbox (``from_local`` and ``from_codebase`` do unless told not to)."""
        self._info = await self._client.start_sandbox(self.id)
        return self

    async def stop(self) -> AsyncSandbox:
        """Stop the sandbox's processes, committing what they wrote; ``start()`` runs it again."""
        self._info = await self._client.stop_sandbox(self.id)
        return self

    async def refresh(self) -> SandboxInfo:
        """Ask the server for the sandbox's state again; also kept as ``info``."""
        self._info = await self._client.get_sandbox(self.id)
        return self._info

    async def destroy(self) -> None:
        """Destroy the sandbox (and the codebase ``from_local`` created); idempotent."""
        if self._closed:
            return
        self._closed = True
        with finishing(self._client.cleanup_timeout):
            try:
                with contextlib.suppress(SandboxNotFoundError):  # gone already: its codebase too
                    await self._client.destroy_sandbox(self.id)
                if self._owned_codebase_id is not None:
                    await self._client.delete_codebase(self._owned_codebase_id)
            finally:
                if self._owns_client:
                    await self._client.close()

    async def close(self) -> None:
        """Release the connection without destroying anything."""
        if not self._closed and self._owns_client:
            self._closed = True
            await self._client.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns_sandbox:
            await self.destroy()
        else:
            with finishing(self._client.cleanup_timeout):
                await self.close()

    # -- commands ---------------------------------------------------------------------------

    async def run(
        self,
        command: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        raise_on_error: bool = False,
    ) -> ExecResult:
        """Run ``command`` with ``sh -c`` in the sandbox and wait for it.

        ``timeout``: ``None`` for the server's default, ``0`` for none up to the server's
        maximum, else seconds; past it the command is killed whole (``CommandTimeoutError``)."""
        return await self.exec(
            command, timeout=timeout, env=env, workdir=workdir, raise_on_error=raise_on_error
        )

    async def exec(
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
        result = await self._client.exec(
            self.id, command, stdin=stdin, env=env, workdir=workdir, timeout=timeout
        )
        return checked(result, command, raise_on_error)

    def exec_stream(
        self,
        command: str,
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
    ) -> ExecStream:
        """Stream the command's output: ``async with sandbox.exec_stream(cmd) as s: ...``."""
        return self._client.exec_stream(
            self.id, command, stdin=stdin, env=env, workdir=workdir, timeout=timeout
        )

    def session(
        self, shell: str | None = None, env: Mapping[str, str] | None = None
    ) -> SessionOpener:
        """A persistent shell: ``async with await sandbox.session() as s`` (or without the
        ``await``); ``shell`` defaults to bash where the sandbox has it, else sh."""
        return SessionOpener(self._client, self.id, shell, env)

    # -- files (through the sandbox's own view and permissions) -----------------------------
    #
    # The server's file RPCs when it has them; otherwise (another server of the sandbox.v1
    # API) commands in the running sandbox, which go through its view all the same.

    async def _file_rpc(self, path: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """The RPC's answer, or None to use commands instead: for a server without the RPCs,
        or a path outside the workspace (the sandbox's own /tmp, /etc, /proc...)."""
        if self._client.lacks_file_rpcs or not _files.in_workspace(path):
            return None
        try:
            return await call()
        except SandboxError as exc:
            if exc.code != StatusCode.UNIMPLEMENTED:
                raise
            self._client.lacks_file_rpcs = True
            return None

    async def read_file_bytes(self, path: str) -> bytes:
        """A file's content, read through the sandbox's view and its permissions."""
        data = await self._file_rpc(path, lambda: self._client.read_sandbox_file(self.id, path))
        if data is not None:
            return data
        command = _files.read_command(path)
        timeout: float | None = _files.READ_TIMEOUT
        try:
            try:
                result = await self._client.exec(self.id, command, timeout=timeout)
            except InvalidConfigurationError:  # a server whose max_timeout is shorter
                timeout = None
                result = await self._client.exec(self.id, command, timeout=timeout)
        except CommandTimeoutError:
            raise _files.read_timed_out(path, timeout) from None
        return _files.decode(result, path)

    async def read_file(self, path: str, encoding: str = "utf-8") -> str:
        """A file's content as text (``encoding``), read through the sandbox's view."""
        return (await self.read_file_bytes(path)).decode(encoding)

    async def write_file(self, path: str, content: str | bytes) -> None:
        """Write a file through the sandbox's view and permissions; it lands whole or not at all."""
        written = await self._file_rpc(
            path, lambda: self._client.write_sandbox_file(self.id, path, content)
        )
        if written is not None:
            return
        data = _files.as_bytes(content)
        result = await self._client.exec(
            self.id, _files.write_command(path, data), stdin=_files.encode(data)
        )
        _files.check_written(result, path)

    async def list_files(self, path: str = "/workspace", recursive: bool = False) -> list[FileInfo]:
        """The entries of a directory as the sandbox sees it (all below it with ``recursive``)."""
        found = await self._file_rpc(
            path, lambda: self._client.list_sandbox_files(self.id, path, recursive)
        )
        if found is not None:
            return found
        result = await self._client.exec(self.id, _files.list_command(path, recursive))
        return _files.parse_listing(result, path)

    # -- review (docs/review.md) -------------------------------------------------------------

    async def changes(self, paths: Iterable[str] | str | None = None) -> list[FileChange]:
        """Where this sandbox's files differ from its codebase's, at or below ``paths``
        (None: everywhere), by path, relative to /workspace."""
        return await self._client.list_changes(self.id, paths)

    async def diff(
        self, paths: Iterable[str] | str | None = None, *, max_bytes: int | None = None
    ) -> str:
        """Those changes as a unified diff (``a/``: the codebase, ``b/``: the sandbox)."""
        return await self._client.diff_changes(self.id, paths, max_bytes=max_bytes)

    async def commit(
        self, paths: Iterable[str] | str | None = None, *, overwrite: bool = False
    ) -> CommitResult:
        """Apply the changes at or below ``paths`` (None: all) to the codebase; what was
        applied, and what conflicted (left here, unless ``overwrite``)."""
        return await self._client.commit_changes(self.id, paths, overwrite=overwrite)

    async def discard(self, paths: Iterable[str] | str | None = None) -> list[str]:
        """Give this sandbox back the codebase's files at or below ``paths`` (None: all)."""
        return await self._client.discard_changes(self.id, paths)

    # -- checkpoints and forks (docs/review.md) -----------------------------------------------

    async def checkpoint(self, name: str | None = None) -> Checkpoint:
        """Capture this sandbox's changes (``commit="manual"``): its files, not its
        processes. Costs a copy of what changed, not of the codebase."""
        return await self._client.create_checkpoint(self.id, name or "")

    async def restore(self, checkpoint: Checkpoint | str) -> Checkpoint:
        """Make this sandbox's changes what they were at ``checkpoint``. Processes still
        running are not rolled back: they see the files change under them."""
        return await self._client.restore_checkpoint(self.id, _checkpoint_id(checkpoint))

    async def list_checkpoints(self) -> list[Checkpoint]:
        """This sandbox's checkpoints, oldest first."""
        return await self._client.list_checkpoints(self.id)

    async def delete_checkpoint(self, checkpoint: Checkpoint | str) -> None:
        """Delete a checkpoint (the sandbox's files stay as they are)."""
        await self._client.delete_checkpoint(self.id, _checkpoint_id(checkpoint))

    # -- network (docs/network.md) ---------------------------------------------------------

    async def network_log(self, *, after: int = 0) -> list[NetworkConnection]:
        """Every connection this sandbox made through its proxy (allowed, denied or failed:
        host, port, bytes each way, when) and every DNS lookup it tried, oldest first; only
        those numbered above ``after`` when given."""
        return await self._client.get_network_log(self.id, after)

    def events(self, *, after: int = 0) -> EventStream:
        """What this sandbox's commands do to its files, and what its permissions refuse,
        as it happens: ``async with sandbox.events() as events: async for event in events``
        (``after``: resume after that event's ``seq``). See docs/review.md for what is
        seen and the loss policy."""
        return self._client.watch_events(self.id, after=after)

    async def fork(self) -> AsyncSandbox:
        """A new, running sandbox like this one (codebase, rules, limits, runtime, image,
        labels, commit mode) whose changes start as a copy of this one's, uncommitted ones
        included; then each goes its own way. It uses this sandbox's connection: leave it
        (``async with``, or ``destroy``) before this one is closed. See ``open_forks``."""
        info = await _created(self._client.fork_sandbox(self.id))
        try:
            await _cancellation_point()
        except BaseException:
            with finishing(self._client.cleanup_timeout):
                await _quietly(self._client.destroy_sandbox(info.id))
            raise
        return type(self)._create(self._client, info, owns_client=False, owns_sandbox=True)


def _checkpoint_id(checkpoint: Checkpoint | str) -> str:
    return checkpoint if isinstance(checkpoint, str) else checkpoint.id


def default_owner() -> str:
    """The owner ``from_local`` gives a codebase when told none: the local user's name."""
    try:
        name = getpass.getuser().strip()
    except (OSError, KeyError):  # no login name in the environment, no passwd entry
        return "default"
    return name if name and "\x00" not in name and len(name) <= 128 else "default"


async def _upload_project(
    client: AsyncSandboxClient, codebase_id: str, files: Sequence[ProjectFile]
) -> None:
    """All of a project's files: one archive stream, or (a server without it) one upload per
    file, several at a time."""
    if not client.lacks_archive_upload:
        try:
            await client.upload_archive(codebase_id, [(f.rel_path, f.abs_path) for f in files])
        except SandboxError as exc:
            if exc.code != StatusCode.UNIMPLEMENTED:
                raise
            client.lacks_archive_upload = True
        else:
            return
    limiter = anyio.CapacityLimiter(UPLOAD_CONCURRENCY)

    async def upload(item: ProjectFile) -> None:
        async with limiter:
            await client.upload_local_file(codebase_id, item.rel_path, item.abs_path)

    async with anyio.create_task_group() as tg:
        for item in files:
            tg.start_soon(upload, item)


async def _created(call: Awaitable[T]) -> T:
    """The result of an RPC that creates something, even if the caller is cancelled meanwhile
    (the cancellation comes at the caller's next await, once it holds what was created and
    can remove it)."""
    with finishing(CREATE_TIMEOUT):
        return await call


async def _cancellation_point() -> None:
    """Where a cancellation that ``_created`` held back reaches a factory: while it still
    holds what it made, and removes it. (Without an await after the create, asyncio's own
    cancellation would end the factory's task with its result dropped: a sandbox left
    running that nobody holds.)"""
    await anyio.lowlevel.checkpoint()


async def _quietly(awaitable: Awaitable[object]) -> None:
    try:
        await awaitable
    except Exception as exc:
        log.warning("cleanup failed: %s", exc)
