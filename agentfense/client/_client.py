"""``AsyncSandboxClient``: every RPC of the ``sandbox.v1`` API, with the SDK's own types."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import final

import anyio

from .. import _convert as convert
from .. import _timeouts as timeouts
from .._blocking import BlockingFile, run_sync
from .._local_token import read_local_token
from .._proto.sandbox import v1 as pb
from .._transport import Transport, finishing, open_transport
from ..errors import InvalidConfigurationError
from ..presets import RuleLike, normalize_rules
from ..types import (
    Codebase,
    CommitMode,
    ExecResult,
    FileInfo,
    ResourceLimits,
    RuntimeType,
    SandboxInfo,
    SandboxStatus,
    SessionInfo,
    TLSConfig,
    UploadResult,
)
from . import _rpcs as rpcs
from ._environment import api_key_or_configured, endpoint_or_configured, tls_or_configured
from ._request_parts import (
    UPLOAD_CHUNK,
    as_bytes,
    commit_mode,
    duration,
    is_executable,
    network_patterns,
    pieces,
    read_if_small,
    runtime_type,
    set_timeout,
)
from ._review_calls import ReviewCalls
from ._rpcs import ClientStream, Rep, Req, ServerStream, Unary
from ._stream import ExecStream

log = logging.getLogger("agentfense")

# How long one cleanup call (destroying a sandbox or a session, deleting a codebase) may take.
# Long enough for heavy legitimate work: deleting a codebase of 50,000 directories and a
# 256 MiB file took 24 s to over 30 s on a loaded 2-core VM.
DEFAULT_CLEANUP_TIMEOUT = 120.0


@final
class AsyncSandboxClient(ReviewCalls):
    """Low-level async client of an AgentFense server (or any ``sandbox.v1`` server).

    Works under asyncio and trio alike. Use ``async with AsyncSandboxClient(...) as client``,
    or call ``await client.close()`` when done.

    ``endpoint``: ``host:port``, ``[::1]:port`` or ``unix:/path``; when None, the
    ``AGENTFENSE_ENDPOINT`` environment variable, else ``localhost:9000``.

    ``api_key``: the API token sent with every call (``authorization: Bearer``); when None,
    the ``AGENTFENSE_API_KEY`` environment variable, else the token that a server run by
    the same user left for this endpoint (deployment.md, "Authentication"), else none ("":
    none). It is never shown in a repr, a log line or an error.

    ``secure``: connect over TLS, checking the server against the system's trust store;
    ``tls``: over TLS with a CA bundle of one's own and a client certificate (mutual TLS).
    Without either, the ``AGENTFENSE_TLS_CA``, ``AGENTFENSE_TLS_CLIENT_CERT`` and
    ``AGENTFENSE_TLS_CLIENT_KEY`` variables, when set, give the TLS of a ``host:port``
    endpoint. ``tls`` says what TLS is used, or None.

    ``cleanup_timeout``: how long each call that cleans up on the way out (``AsyncSandbox``
    destroying its sandbox and codebase, a session closing) may wait for the server, in
    seconds; past it the call raises ``ConnectionError`` instead of holding the caller.
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
        self.endpoint = endpoint_or_configured(endpoint)
        self.tls = tls_or_configured(self.endpoint, secure, tls)
        self.secure = self.tls is not None
        self._api_key = api_key_or_configured(api_key)
        self.cleanup_timeout = cleanup_timeout
        self._transport: Transport | None = None
        self._opening: anyio.Event | None = None
        # AgentFense extensions the server turned down (UNIMPLEMENTED): not asked again.
        self.lacks_file_rpcs = False
        self.lacks_archive_upload = False

    async def _api_key_now(self) -> str | None:
        api_key = self._api_key
        if api_key is None:  # (read now: the server may have written it since)
            api_key = await run_sync(lambda: read_local_token(self.endpoint))
        return api_key or None

    @contextlib.asynccontextmanager
    async def _own_server_stream(
        self, rpc: ServerStream[Req, Rep], request: Req
    ) -> AsyncIterator[AsyncIterator[Rep]]:
        """A server stream on a connection of its own, closed with it: a stream its reader
        may leave unread for a while (events) must not fill the window of the connection
        every other call of this client shares."""
        transport = await open_transport(
            self.endpoint, api_key=await self._api_key_now(), tls=self.tls
        )
        try:
            async with transport.server_stream(rpc.path, request, rpc.reply) as stream:
                yield stream
        finally:
            with anyio.CancelScope(shield=True):
                await transport.aclose()

    async def _channel(self) -> Transport:
        while self._transport is None:
            if self._opening is not None:
                await self._opening.wait()
                continue
            self._opening = anyio.Event()
            try:
                self._transport = await open_transport(
                    self.endpoint, api_key=await self._api_key_now(), tls=self.tls
                )
            finally:
                self._opening.set()
                self._opening = None
        return self._transport

    @property
    def cleanup_timeout(self) -> float:
        """How long each call that cleans up on the way out may wait for the server, in seconds."""
        return self._cleanup_timeout

    @cleanup_timeout.setter
    def cleanup_timeout(self, seconds: float) -> None:
        if not isinstance(seconds, int | float) or not 0 < seconds < float("inf"):
            raise InvalidConfigurationError(
                f"cleanup_timeout must be a positive number of seconds, not {seconds!r}"
            )
        self._cleanup_timeout = float(seconds)

    async def _unary(
        self, rpc: Unary[Req, Rep], request: Req, *, timeout: float | None = None
    ) -> Rep:
        transport = await self._channel()
        return await transport.unary(rpc.path, request, rpc.reply, timeout=timeout)

    @contextlib.asynccontextmanager
    async def _server_stream(
        self, rpc: ServerStream[Req, Rep], request: Req
    ) -> AsyncIterator[AsyncIterator[Rep]]:
        transport = await self._channel()
        async with transport.server_stream(rpc.path, request, rpc.reply) as stream:
            yield stream

    async def _client_stream(
        self, rpc: ClientStream[Req, Rep], produce: Callable[[], AsyncIterator[Req]]
    ) -> Rep:
        transport = await self._channel()
        return await transport.client_stream(rpc.path, produce, rpc.reply)

    async def close(self) -> None:
        """Close the connection (``aclose`` is the same); it reopens on the next call."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncSandboxClient:
        await self._channel()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with finishing(self.cleanup_timeout):
            await self.close()

    # -- codebases --------------------------------------------------------------------------

    async def create_codebase(self, name: str, owner_id: str = "") -> Codebase:
        """Create an empty codebase named ``name``, owned by ``owner_id``."""
        request = pb.CreateCodebaseRequest(name=name, owner_id=owner_id or "")
        return convert.codebase_from_pb(await self._unary(rpcs.CREATE_CODEBASE, request))

    async def get_codebase(self, codebase_id: str) -> Codebase:
        """What the server holds of one codebase (``CodebaseNotFoundError`` if none)."""
        request = pb.GetCodebaseRequest(codebase_id=codebase_id)
        return convert.codebase_from_pb(await self._unary(rpcs.GET_CODEBASE, request))

    async def list_codebases(self, owner_id: str = "", *, page_size: int = 0) -> list[Codebase]:
        """Every codebase (of ``owner_id`` if given), fetched page by page."""
        found: list[Codebase] = []
        token = ""
        while True:
            request = pb.ListCodebasesRequest(
                owner_id=owner_id or "", page_size=page_size, page_token=token
            )
            reply = await self._unary(rpcs.LIST_CODEBASES, request)
            found += [convert.codebase_from_pb(c) for c in reply.codebases]
            token = reply.next_page_token
            if not token:
                return found

    async def delete_codebase(self, codebase_id: str) -> None:
        """Delete a codebase and its files."""
        request = pb.DeleteCodebaseRequest(codebase_id=codebase_id)
        await self._unary(rpcs.DELETE_CODEBASE, request)

    async def upload_file(
        self, codebase_id: str, file_path: str, content: bytes | str
    ) -> UploadResult:
        """Upload ``content`` as ``file_path`` of the codebase (streamed in chunks)."""
        return await self._upload_bytes(codebase_id, file_path, as_bytes(content), False)

    async def _upload_bytes(
        self, codebase_id: str, file_path: str, data: bytes, executable: bool
    ) -> UploadResult:
        async def chunks() -> AsyncIterator[pb.UploadChunk]:
            yield pb.UploadChunk(
                metadata=pb.UploadChunkMetadata(
                    codebase_id=codebase_id,
                    file_path=file_path,
                    total_size=len(data),
                    executable=executable,
                )
            )
            for piece in pieces(data):
                yield pb.UploadChunk(data=piece)

        return await self._upload(chunks)

    async def upload_local_file(
        self, codebase_id: str, file_path: str, local_path: str | PathLike[str]
    ) -> UploadResult:
        """Upload a local file (executable if it is); a large one is streamed without being
        read into memory."""
        source = Path(local_path)
        small, executable = await run_sync(read_if_small, source)
        if small is not None:  # one trip to a thread instead of one per step
            return await self._upload_bytes(codebase_id, file_path, small, executable)

        async def chunks() -> AsyncIterator[pb.UploadChunk]:
            async with BlockingFile(source) as handle:
                st = await handle.stat()
                yield pb.UploadChunk(
                    metadata=pb.UploadChunkMetadata(
                        codebase_id=codebase_id,
                        file_path=file_path,
                        total_size=st.st_size,
                        executable=is_executable(st.st_mode),
                    )
                )
                while block := await handle.read(UPLOAD_CHUNK):
                    yield pb.UploadChunk(data=block)

        return await self._upload(chunks)

    async def upload_archive(
        self, codebase_id: str, files: Sequence[tuple[str, str | PathLike[str]]]
    ) -> list[UploadResult]:
        """Upload local files (``(file_path, local_path)`` pairs) in one stream (an AgentFense
        extension: ``SandboxError`` with code 12 from servers without it)."""

        async def chunks() -> AsyncIterator[pb.ArchiveChunk]:
            yield pb.ArchiveChunk(codebase_id=codebase_id)
            for file_path, local_path in files:
                small, executable = await run_sync(read_if_small, Path(local_path))
                if small is not None:
                    yield pb.ArchiveChunk(
                        file=pb.ArchiveChunkFile(
                            file_path=file_path, size=len(small), executable=executable
                        )
                    )
                    if small:
                        yield pb.ArchiveChunk(data=small)
                    continue
                async with BlockingFile(Path(local_path)) as handle:
                    st = await handle.stat()
                    size = st.st_size
                    header = pb.ArchiveChunkFile(
                        file_path=file_path, size=size, executable=is_executable(st.st_mode)
                    )
                    yield pb.ArchiveChunk(file=header)
                    sent = 0
                    while sent < size and (
                        block := await handle.read(min(UPLOAD_CHUNK, size - sent))
                    ):
                        sent += len(block)
                        yield pb.ArchiveChunk(data=block)
                if sent != size:
                    raise InvalidConfigurationError(f"{local_path} changed while it was uploaded")

        reply = await self._client_stream(rpcs.UPLOAD_ARCHIVE, chunks)
        return [convert.upload_result_from_pb(f) for f in reply.files]

    async def _upload(self, chunks: Callable[[], AsyncIterator[pb.UploadChunk]]) -> UploadResult:
        reply = await self._client_stream(rpcs.UPLOAD_FILES, chunks)
        return convert.upload_result_from_pb(reply)

    async def download_file(self, codebase_id: str, file_path: str) -> bytes:
        """The whole content of a codebase file (the owner's unfiltered view)."""
        request = pb.DownloadFileRequest(codebase_id=codebase_id, file_path=file_path)
        parts: list[bytes] = []
        async with self._server_stream(rpcs.DOWNLOAD_FILE, request) as stream:
            async for chunk in stream:
                parts.append(chunk.data)
        return b"".join(parts)

    async def list_files(
        self, codebase_id: str, path: str = "", recursive: bool = False
    ) -> list[FileInfo]:
        """A codebase's entries under ``path`` (all below it with ``recursive``), unfiltered."""
        request = pb.ListFilesRequest(codebase_id=codebase_id, path=path, recursive=recursive)
        reply = await self._unary(rpcs.LIST_FILES, request)
        return [convert.file_info_from_pb(f) for f in reply.files]

    # -- sandboxes --------------------------------------------------------------------------

    async def create_sandbox(
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
        once that much time has passed. ``commit``: ``"auto"`` (its writes reach the
        codebase after every command) or ``"manual"`` (only by ``commit_changes``).
        ``network``: the hosts it may reach through the server's proxy ("pypi.org",
        "*.pythonhosted.org", "github.com:443"); None or "none": no network
        (docs/network.md)."""
        mode = commit_mode(commit)
        patterns = network_patterns(network)
        expiry = (
            expires_in if isinstance(expires_in, timedelta) else duration(expires_in, "expires_in")
        )
        request = pb.CreateSandboxRequest(
            codebase_id=codebase_id,
            permissions=[convert.rule_to_pb(r) for r in normalize_rules(permissions)],
            labels=dict(labels or {}),
            runtime=convert.RUNTIME_TO_PB[runtime_type(runtime)],
            image=image or "",
            resources=convert.resources_to_pb(resources),
            keep_home=keep_home,
            start=start,
            commit_mode=convert.COMMIT_MODE_TO_PB[mode],
            network=pb.NetworkPolicy(allow=patterns),
        )
        if expiry is not None:
            request.expires_in = expiry
        info = convert.sandbox_from_pb(await self._unary(rpcs.CREATE_SANDBOX, request))
        if info.commit_mode is not mode:  # (a server without the extension commits anyway)
            await self._destroy_unwanted(info.id)
            raise InvalidConfigurationError(
                f"commit={mode.value!r} is not supported by this server (it commits after "
                "every command)"
            )
        if patterns and not info.network:  # (a server without the extension: no network)
            await self._destroy_unwanted(info.id)
            raise InvalidConfigurationError(
                "network is not supported by this server (its sandboxes have none)"
            )
        if start and info.status is not SandboxStatus.RUNNING:
            info = await self._start_created(info.id)  # (a server without the extension)
        return info

    async def _destroy_unwanted(self, sandbox_id: str) -> None:
        with finishing(self.cleanup_timeout):
            try:
                await self.destroy_sandbox(sandbox_id)
            except Exception as exc:
                log.warning("cleanup failed: sandbox %s not destroyed: %s", sandbox_id, exc)

    async def _start_created(self, sandbox_id: str) -> SandboxInfo:
        """Start a sandbox just created; destroy it if it cannot start."""
        try:
            return await self.start_sandbox(sandbox_id)
        except BaseException:
            await self._destroy_unwanted(sandbox_id)
            raise

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """What the server says of one sandbox (``SandboxNotFoundError`` if none)."""
        request = pb.GetSandboxRequest(sandbox_id=sandbox_id)
        return convert.sandbox_from_pb(await self._unary(rpcs.GET_SANDBOX, request))

    async def list_sandboxes(
        self, codebase_id: str = "", *, page_size: int = 0
    ) -> list[SandboxInfo]:
        """Every sandbox (of ``codebase_id`` if given), fetched page by page."""
        found: list[SandboxInfo] = []
        token = ""
        while True:
            request = pb.ListSandboxesRequest(
                codebase_id=codebase_id or "", page_size=page_size, page_token=token
            )
            reply = await self._unary(rpcs.LIST_SANDBOXES, request)
            found += [convert.sandbox_from_pb(s) for s in reply.sandboxes]
            token = reply.next_page_token
            if not token:
                return found

    async def start_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """Start a sandbox; its state after."""
        request = pb.StartSandboxRequest(sandbox_id=sandbox_id)
        return convert.sandbox_from_pb(await self._unary(rpcs.START_SANDBOX, request))

    async def stop_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """Stop a sandbox's processes, committing what they wrote; its state after."""
        request = pb.StopSandboxRequest(sandbox_id=sandbox_id)
        return convert.sandbox_from_pb(await self._unary(rpcs.STOP_SANDBOX, request))

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        """Destroy a sandbox, committing what it wrote first."""
        request = pb.DestroySandboxRequest(sandbox_id=sandbox_id)
        await self._unary(rpcs.DESTROY_SANDBOX, request)

    @staticmethod
    def _exec_request(
        sandbox_id: str,
        command: str,
        stdin: str | None,
        env: Mapping[str, str] | None,
        workdir: str | None,
        timeout: float | None,
    ) -> pb.ExecRequest:
        if not isinstance(command, str):
            raise InvalidConfigurationError("command must be a string")
        request = pb.ExecRequest(
            sandbox_id=sandbox_id,
            command=command,
            stdin=stdin or "",
            env={str(k): str(v) for k, v in (env or {}).items()},
            workdir=workdir or "",
        )
        set_timeout(request, timeout)
        return request

    async def exec(
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
        request = self._exec_request(sandbox_id, command, stdin, env, workdir, timeout)
        deadline = timeouts.client_deadline(timeout)
        reply = await self._unary(rpcs.EXEC, request, timeout=deadline)
        return convert.exec_result_from_pb(reply)

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
        request = self._exec_request(sandbox_id, command, stdin, env, workdir, timeout)
        return ExecStream._create(lambda: self._server_stream(rpcs.EXEC_STREAM, request))

    # -- a sandbox's files, through its view and permissions (AgentFense extension) ---------

    async def read_sandbox_file(self, sandbox_id: str, path: str) -> bytes:
        """A file as the sandbox sees it (``/workspace/...`` or relative to it)."""
        request = pb.SandboxFileRequest(sandbox_id=sandbox_id, path=path)
        parts: list[bytes] = []
        async with self._server_stream(rpcs.READ_SANDBOX_FILE, request) as stream:
            async for chunk in stream:
                parts.append(chunk.data)
        return b"".join(parts)

    async def write_sandbox_file(
        self, sandbox_id: str, path: str, content: bytes | str
    ) -> UploadResult:
        """Write a file as the sandbox could (its permissions apply), then commit it."""
        data = as_bytes(content)

        async def chunks() -> AsyncIterator[pb.SandboxFileChunk]:
            yield pb.SandboxFileChunk(
                metadata=pb.SandboxFileChunkMetadata(
                    sandbox_id=sandbox_id, path=path, total_size=len(data)
                )
            )
            for piece in pieces(data):
                yield pb.SandboxFileChunk(data=piece)

        reply = await self._client_stream(rpcs.WRITE_SANDBOX_FILE, chunks)
        return convert.upload_result_from_pb(reply)

    async def list_sandbox_files(
        self, sandbox_id: str, path: str = "/workspace", recursive: bool = False
    ) -> list[FileInfo]:
        """What the sandbox sees below ``path``; paths are given as ``/workspace/...``."""
        request = pb.ListSandboxFilesRequest(sandbox_id=sandbox_id, path=path, recursive=recursive)
        reply = await self._unary(rpcs.LIST_SANDBOX_FILES, request)
        return [
            dataclasses.replace(convert.file_info_from_pb(f), path=f"/workspace/{f.path}")
            for f in reply.files
        ]

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(
        self, sandbox_id: str, *, shell: str = "", env: Mapping[str, str] | None = None
    ) -> SessionInfo:
        """Open a persistent shell in a running sandbox (``shell``: bash if it has one, else sh)."""
        request = pb.CreateSessionRequest(sandbox_id=sandbox_id, shell=shell, env=dict(env or {}))
        return convert.session_from_pb(await self._unary(rpcs.CREATE_SESSION, request))

    async def get_session(self, session_id: str) -> SessionInfo:
        """What the server says of one session (``SessionNotFoundError`` if none)."""
        request = pb.GetSessionRequest(session_id=session_id)
        return convert.session_from_pb(await self._unary(rpcs.GET_SESSION, request))

    async def list_sessions(self, sandbox_id: str) -> list[SessionInfo]:
        """Every session of a sandbox."""
        request = pb.ListSessionsRequest(sandbox_id=sandbox_id)
        reply = await self._unary(rpcs.LIST_SESSIONS, request)
        return [convert.session_from_pb(s) for s in reply.sessions]

    async def destroy_session(self, session_id: str) -> None:
        """Close a session, killing every process it started."""
        request = pb.DestroySessionRequest(session_id=session_id)
        await self._unary(rpcs.DESTROY_SESSION, request)

    @staticmethod
    def _session_exec_request(
        session_id: str, command: str, timeout: float | None
    ) -> pb.SessionExecRequest:
        if not isinstance(command, str):
            raise InvalidConfigurationError("command must be a string")
        request = pb.SessionExecRequest(session_id=session_id, command=command)
        set_timeout(request, timeout)
        return request

    async def session_exec(
        self, session_id: str, command: str, *, timeout: float | None = None
    ) -> ExecResult:
        """Run ``command`` in a session's shell; CommandTimeoutError on timeout."""
        request = self._session_exec_request(session_id, command, timeout)
        deadline = timeouts.client_deadline(timeout)
        reply = await self._unary(rpcs.SESSION_EXEC, request, timeout=deadline)
        return convert.exec_result_from_pb(reply)

    def session_exec_stream(
        self, session_id: str, command: str, *, timeout: float | None = None
    ) -> ExecStream:
        """Run ``command`` in a session's shell and stream its output (see ExecStream)."""
        request = self._session_exec_request(session_id, command, timeout)
        return ExecStream._create(lambda: self._server_stream(rpcs.SESSION_EXEC_STREAM, request))
