"""The ``sandbox.v1.SandboxService`` gRPC service on top of :class:`SandboxManager`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import betterproto
import grpclib.const
import grpclib.server
from grpclib.exceptions import GRPCError

from ..._convert import (
    COMMIT_MODE_FROM_PB,
    RUNTIME_FROM_PB,
    resources_from_pb,
    rules_from_pb,
)
from ..._proto.sandbox import v1 as pb
from ...errors import (
    CommandTimeoutError,
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SandboxError,
    SandboxNotFoundError,
    StatusCode,
)
from ...types import CommitMode, OutputStream, RuntimeType
from .. import change_diff
from .. import sandbox_files as files
from .._paths import wire_text
from ..execution import Outcome
from ..sandbox_files import review_paths
from ..sandbox_table import SandboxRecord
from ..sandboxes import SandboxManager
from . import convert
from .encoded import encoded_off_loop
from .errors import grpc_errors, invalid, status_error
from .guarded import guarded

__all__ = ["SandboxService"]

_FROM_NOW = 1 << 62  # an event seq past any: the watch starts with the next event
_EVENT_WAIT = 5.0  # seconds a watch waits on the fs process before it asks again
MAX_WATCHES = 16  # event watches open at once on one sandbox

_STREAM_TYPE = {
    # (through the enum: see _convert on why a bare generated member is an int to mypy)
    OutputStream.STDOUT: pb.ExecOutputOutputType(pb.ExecOutputOutputType.OUTPUT_TYPE_STDOUT),
    OutputStream.STDERR: pb.ExecOutputOutputType(pb.ExecOutputOutputType.OUTPUT_TYPE_STDERR),
}


def _timed_out(outcome: Outcome) -> GRPCError:
    detail = f"; {outcome.detail}" if outcome.detail else ""
    return status_error(
        CommandTimeoutError(
            f"command timed out after {outcome.duration:.3g} s and was killed{detail}"
        )
    )


def _sandbox_reply(
    answer: Callable[[Any], Awaitable[SandboxRecord]],
) -> Callable[[grpclib.server.Stream[Any, Any]], Awaitable[None]]:
    """A handler answering with the sandbox ``answer`` gives for the request, as
    ``convert.sandbox_reply`` encodes it."""

    async def handler(stream: grpclib.server.Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        if request is None:  # (a client that closed its side without a request)
            raise invalid("the stream carried no request message")
        record = await answer(request)
        await stream.send_message(convert.sandbox_reply(record))

    return handler


class SandboxService(pb.SandboxServiceBase):
    """Sandbox lifecycle, exec, session and sandbox-file RPCs."""

    def __init__(
        self,
        manager: SandboxManager,
        *,
        max_upload_bytes: int,
        max_list_entries: int,
        spool_dir: Path,
    ) -> None:
        self._manager = manager
        self._max_list_entries = max_list_entries
        self._max_upload_bytes = max_upload_bytes
        self._spool_dir = spool_dir  # where a sandbox file write waits until it is whole
        self._watching: dict[str, int] = {}  # sandbox id: its event watches open
        self._diff_turns = change_diff.DiffTurns()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = super().__mapping__()
        mapping["/sandbox.v1.SandboxService/ExecStream"] = grpclib.const.Handler(
            self._exec_stream,
            grpclib.const.Cardinality.UNARY_STREAM,
            pb.ExecRequest,
            pb.ExecOutput,
        )
        mapping["/sandbox.v1.SandboxService/ListSandboxFiles"] = grpclib.const.Handler(
            self._list_sandbox_files,
            grpclib.const.Cardinality.UNARY_UNARY,
            pb.ListSandboxFilesRequest,
            pb.ListFilesResponse,
        )
        mapping["/sandbox.v1.SandboxService/ListChanges"] = grpclib.const.Handler(
            self._list_changes,
            grpclib.const.Cardinality.UNARY_UNARY,
            pb.ListChangesRequest,
            pb.ListChangesResponse,
        )
        mapping["/sandbox.v1.SandboxService/WatchEvents"] = grpclib.const.Handler(
            self._watch_events,
            grpclib.const.Cardinality.UNARY_STREAM,
            pb.WatchEventsRequest,
            pb.EventBatch,
        )
        mapping["/sandbox.v1.SandboxService/SessionExecStream"] = grpclib.const.Handler(
            self._session_exec_stream,
            grpclib.const.Cardinality.UNARY_STREAM,
            pb.SessionExecRequest,
            pb.ExecOutput,
        )
        # The calls that answer with a Sandbox send it encoded, its rules' bytes made once.
        for name, request_type, answer in (
            ("CreateSandbox", pb.CreateSandboxRequest, self._create),
            ("ForkSandbox", pb.ForkSandboxRequest, self._fork),
            ("GetSandbox", pb.GetSandboxRequest, self._get),
            ("StartSandbox", pb.StartSandboxRequest, self._start),
            ("StopSandbox", pb.StopSandboxRequest, self._stop),
        ):
            mapping[f"/sandbox.v1.SandboxService/{name}"] = grpclib.const.Handler(
                _sandbox_reply(answer),
                grpclib.const.Cardinality.UNARY_UNARY,
                request_type,
                pb.Sandbox,
            )
        return guarded(mapping)

    async def _create(self, request: pb.CreateSandboxRequest) -> SandboxRecord:
        with grpc_errors():
            rules = rules_from_pb(request.permissions)
            runtime = RUNTIME_FROM_PB.get(request.runtime, RuntimeType.BWRAP)
            if request.runtime not in RUNTIME_FROM_PB and request.runtime != 0:
                raise InvalidConfigurationError(f"runtime {request.runtime} is not a known runtime")
            commit_mode = COMMIT_MODE_FROM_PB.get(request.commit_mode, CommitMode.AUTO)
            if request.commit_mode not in COMMIT_MODE_FROM_PB and request.commit_mode != 0:
                raise InvalidConfigurationError(
                    f"commit_mode {request.commit_mode} is not a known commit mode"
                )
            record = await self._manager.create(
                network=list(request.network.allow),
                commit_mode=commit_mode,
                codebase_id=request.codebase_id,
                permissions=rules,
                runtime=runtime,
                image=request.image,
                resources=resources_from_pb(request.resources),
                labels=dict(request.labels),
                expires_in=request.expires_in or None,
                keep_home=request.keep_home,
                start=request.start,
            )
            return record

    async def _fork(self, request: pb.ForkSandboxRequest) -> SandboxRecord:
        with grpc_errors():
            return await self._manager.fork(request.sandbox_id, start=request.start)

    async def _get(self, request: pb.GetSandboxRequest) -> SandboxRecord:
        with grpc_errors():
            return self._manager.get(request.sandbox_id)

    async def list_sandboxes(self, request: pb.ListSandboxesRequest) -> pb.ListSandboxesResponse:
        with grpc_errors():
            records, token = self._manager.list(
                request.codebase_id, request.page_size, request.page_token
            )
            return pb.ListSandboxesResponse(
                sandboxes=[convert.sandbox_to_pb(r) for r in records], next_page_token=token
            )

    async def _start(self, request: pb.StartSandboxRequest) -> SandboxRecord:
        with grpc_errors():
            return await self._manager.start(request.sandbox_id)

    async def _stop(self, request: pb.StopSandboxRequest) -> SandboxRecord:
        with grpc_errors():
            return await self._manager.stop(request.sandbox_id)

    async def destroy_sandbox(self, request: pb.DestroySandboxRequest) -> pb.Empty:
        with grpc_errors():
            await self._manager.destroy(request.sandbox_id)
            return pb.Empty()

    async def exec(self, request: pb.ExecRequest) -> pb.ExecResult:
        with grpc_errors():
            params = convert.exec_params_from_pb(request)
            outcome = await self._manager.exec(request.sandbox_id, params)
        if outcome.timed_out:
            raise _timed_out(outcome)
        return convert.exec_result_to_pb(outcome)

    async def _exec_stream(
        self, stream: grpclib.server.Stream[pb.ExecRequest, pb.ExecOutput]
    ) -> None:
        request = await stream.recv_message()
        if request is None:  # (a client that closed its side without a request)
            raise invalid("the stream carried no request message")

        async def send(kind: OutputStream, data: bytes) -> None:
            await stream.send_message(pb.ExecOutput(type=_STREAM_TYPE[kind], data=data))

        with grpc_errors():
            params = convert.exec_params_from_pb(request)
            outcome = await self._manager.exec(request.sandbox_id, params, on_output=send)
        if outcome.timed_out:
            raise _timed_out(outcome)
        await stream.send_message(pb.ExecOutput(result=convert.exec_result_to_pb(outcome)))

    # -- files through the sandbox's view ---------------------------------------------------

    async def read_sandbox_file(
        self, request: pb.SandboxFileRequest
    ) -> AsyncIterator[pb.FileChunk]:
        with grpc_errors():
            record, view = self._manager.view_root(request.sandbox_id)
            rel = files.workspace_relpath(request.path)
            async for data in files.read_file(view, rel, self._manager.view_owner(record)):
                yield pb.FileChunk(data=data)

    async def write_sandbox_file(
        self, request_iterator: AsyncIterator[pb.SandboxFileChunk]
    ) -> pb.UploadResult:
        first = await anext(request_iterator, None)
        if first is None or betterproto.which_one_of(first, "content")[0] != "metadata":
            raise invalid("the first SandboxFileChunk must carry metadata")
        meta = first.metadata

        async def data() -> AsyncIterator[bytes]:
            async for chunk in request_iterator:
                if betterproto.which_one_of(chunk, "content")[0] != "data":
                    raise InvalidConfigurationError(
                        "only the first SandboxFileChunk may carry metadata"
                    )
                yield chunk.data

        with grpc_errors():
            record, view = self._manager.view_root(meta.sandbox_id)
            rel = files.workspace_relpath(meta.path)
            try:
                size, checksum = await files.write_file(
                    view,
                    rel,
                    data(),
                    owner=self._manager.view_owner(record),
                    max_bytes=self._max_upload_bytes,
                    total_size=meta.total_size,
                    spool_dir=self._spool_dir,
                    commit_lock=self._manager.commit_lock(record),
                )
            finally:
                await self._manager.commit(record)
        return convert.upload_result_to_pb(record.codebase_id, meta.path, size, checksum)

    async def _list_sandbox_files(
        self, stream: grpclib.server.Stream[pb.ListSandboxFilesRequest, Any]
    ) -> None:
        """ListSandboxFiles, whose reply is built and encoded in a worker thread."""
        request = await stream.recv_message()
        if request is None:  # (a client that closed its side without a request)
            raise invalid("the stream carried no request message")
        with grpc_errors():
            record, view = self._manager.view_root(request.sandbox_id)
            rel = files.workspace_relpath(request.path)
            found = await anyio.to_thread.run_sync(
                files.list_files,
                view,
                rel,
                request.recursive,
                self._manager.view_owner(record),
                self._max_list_entries,
            )
        await stream.send_message(
            await encoded_off_loop(functools.partial(convert.list_files_reply, found))
        )

    # -- review -----------------------------------------------------------------------------

    async def _list_changes(
        self, stream: grpclib.server.Stream[pb.ListChangesRequest, Any]
    ) -> None:
        """ListChanges, whose reply (up to 50,000 changes) is encoded in a worker thread."""
        request = await stream.recv_message()
        if request is None:  # (a client that closed its side without a request)
            raise invalid("the stream carried no request message")
        with grpc_errors():
            paths = review_paths(request.paths)
            reply = await self._manager.list_changes(request.sandbox_id, paths)
        await stream.send_message(
            await encoded_off_loop(functools.partial(convert.changes_reply, reply))
        )

    async def diff_changes(self, request: pb.DiffChangesRequest) -> pb.DiffChangesResponse:
        with grpc_errors():
            most = request.max_bytes or change_diff.DEFAULT_MAX_BYTES
            if not 0 < most <= change_diff.MOST_MAX_BYTES:
                raise InvalidConfigurationError(
                    f"max_bytes must be from 1 to {change_diff.MOST_MAX_BYTES}"
                )
            paths = review_paths(request.paths)
            self._manager.view_root(request.sandbox_id)  # (one not there waits for no turn)
            async with self._diff_turns.turn(request.sandbox_id):
                reply = await self._manager.list_changes(request.sandbox_id, paths)
                record, view = self._manager.view_root(request.sandbox_id)
                diff, truncated = await anyio.to_thread.run_sync(
                    functools.partial(
                        change_diff.render,
                        reply.changes,
                        codebase_root=self._manager.codebase_root(record),
                        view_root=view,
                        owner=self._manager.view_owner(record),
                        max_bytes=most,
                    )
                )
            return pb.DiffChangesResponse(
                diff=diff, truncated=truncated or reply.total > len(reply.changes)
            )

    async def commit_changes(self, request: pb.CommitChangesRequest) -> pb.CommitChangesResponse:
        with grpc_errors():
            reply = await self._manager.commit_changes(
                request.sandbox_id, review_paths(request.paths), overwrite=request.overwrite
            )
            return pb.CommitChangesResponse(
                applied=[wire_text(path) for path in reply.applied],
                conflicts=[pb.CommitConflict(wire_text(p), why) for p, why in reply.conflicts],
            )

    async def discard_changes(self, request: pb.DiscardChangesRequest) -> pb.DiscardChangesResponse:
        with grpc_errors():
            paths = review_paths(request.paths)
            reply = await self._manager.discard_changes(request.sandbox_id, paths)
            return pb.DiscardChangesResponse(discarded=[wire_text(p) for p in reply.applied])

    async def _watch_events(
        self, stream: grpclib.server.Stream[pb.WatchEventsRequest, pb.EventBatch]
    ) -> None:
        """WatchEvents: a first batch once the watch has begun (empty unless resumed), then
        each batch as events come, until the client leaves or the sandbox is destroyed."""
        request = await stream.recv_message()
        if request is None:  # (a client that closed its side without a request)
            raise invalid("the stream carried no request message")
        watching = self._watching.get(request.sandbox_id, 0)
        if watching >= MAX_WATCHES:
            raise status_error(
                ResourceLimitExceededError(
                    f"sandbox {request.sandbox_id[:64]!r} has {MAX_WATCHES} watches of its "
                    "events open, the most it may have"
                )
            )
        self._watching[request.sandbox_id] = watching + 1
        try:
            await self._watch(stream, request)
        finally:
            left = self._watching.pop(request.sandbox_id) - 1
            if left:
                self._watching[request.sandbox_id] = left

    async def _watch(
        self,
        stream: grpclib.server.Stream[pb.WatchEventsRequest, pb.EventBatch],
        request: pb.WatchEventsRequest,
    ) -> None:
        after = min(request.after or _FROM_NOW, _FROM_NOW)  # (past any: from now on)
        wait = 0.0  # (the first answer at once: the watch has begun)
        launch = self._manager.fs_launches
        while True:
            with grpc_errors():
                if self._manager.find(request.sandbox_id) is None and wait:
                    return  # destroyed: the stream ends
                try:
                    batch = await self._manager.watch_events(request.sandbox_id, after, wait)
                except SandboxNotFoundError:
                    if wait:
                        return
                    raise
                if self._manager.fs_launches != launch:
                    # Another process took the sandbox over: what the old one kept, and
                    # what happened before the new one was asked, are gone, and it counts
                    # seqs anew. Said, rather than going on as if nothing was missed.
                    raise SandboxError(
                        "the permission filesystem restarted: the sandbox's events since the "
                        f"last one sent (seq {after if after != _FROM_NOW else 0}) are not "
                        "known; watch again (from now on)",
                        code=StatusCode.UNAVAILABLE,
                    )
            if batch.events or batch.lost or not wait:
                await stream.send_message(convert.event_batch_to_pb(batch))
            after, wait = batch.next, _EVENT_WAIT

    # -- checkpoints ------------------------------------------------------------------------

    async def create_checkpoint(self, request: pb.CreateCheckpointRequest) -> pb.Checkpoint:
        with grpc_errors():
            record = self._manager.get(request.sandbox_id)
            made = await self._manager.checkpoints.create(record, request.name)
            return convert.checkpoint_to_pb(made)

    async def list_checkpoints(
        self, request: pb.ListCheckpointsRequest
    ) -> pb.ListCheckpointsResponse:
        with grpc_errors():
            record = self._manager.get(request.sandbox_id)
            found = self._manager.checkpoints.list(record)
            return pb.ListCheckpointsResponse([convert.checkpoint_to_pb(c) for c in found])

    async def restore_checkpoint(self, request: pb.RestoreCheckpointRequest) -> pb.Checkpoint:
        with grpc_errors():
            record = self._manager.get(request.sandbox_id)
            restored = await self._manager.checkpoints.restore(record, request.checkpoint_id)
            return convert.checkpoint_to_pb(restored)

    async def delete_checkpoint(self, request: pb.DeleteCheckpointRequest) -> pb.Empty:
        with grpc_errors():
            record = self._manager.get(request.sandbox_id)
            await self._manager.checkpoints.delete(record, request.checkpoint_id)
            return pb.Empty()

    # -- network ----------------------------------------------------------------------------

    async def get_network_log(self, request: pb.GetNetworkLogRequest) -> pb.NetworkLog:
        with grpc_errors():
            record = self._manager.get(request.sandbox_id)
            log = record.network_log
            if log is None:
                return pb.NetworkLog()
            return convert.network_log_to_pb(log.after(request.after), log.dropped)

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(self, request: pb.CreateSessionRequest) -> pb.Session:
        with grpc_errors():
            convert.check_command_text("", request.env, request.shell, path_field="shell")
            session = await self._manager.sessions.create(
                request.sandbox_id, request.shell, dict(request.env)
            )
            return convert.session_to_pb(session)

    async def get_session(self, request: pb.GetSessionRequest) -> pb.Session:
        with grpc_errors():
            return convert.session_to_pb(self._manager.sessions.get(request.session_id))

    async def list_sessions(self, request: pb.ListSessionsRequest) -> pb.ListSessionsResponse:
        with grpc_errors():
            found = self._manager.sessions.list(request.sandbox_id)
            return pb.ListSessionsResponse(sessions=[convert.session_to_pb(s) for s in found])

    async def destroy_session(self, request: pb.DestroySessionRequest) -> pb.Empty:
        with grpc_errors():
            await self._manager.sessions.destroy(request.session_id)
            return pb.Empty()

    async def session_exec(self, request: pb.SessionExecRequest) -> pb.ExecResult:
        with grpc_errors():
            outcome = await self._manager.sessions.exec(
                request.session_id, request.command, convert.timeout_from_pb(request)
            )
        if outcome.timed_out:
            raise _timed_out(outcome)
        return convert.exec_result_to_pb(outcome)

    async def _session_exec_stream(
        self, stream: grpclib.server.Stream[pb.SessionExecRequest, pb.ExecOutput]
    ) -> None:
        request = await stream.recv_message()
        if request is None:  # (a client that closed its side without a request)
            raise invalid("the stream carried no request message")

        async def send(kind: OutputStream, data: bytes) -> None:
            await stream.send_message(pb.ExecOutput(type=_STREAM_TYPE[kind], data=data))

        with grpc_errors():
            outcome = await self._manager.sessions.exec(
                request.session_id,
                request.command,
                convert.timeout_from_pb(request),
                on_output=send,
            )
        if outcome.timed_out:
            raise _timed_out(outcome)
        await stream.send_message(pb.ExecOutput(result=convert.exec_result_to_pb(outcome)))
