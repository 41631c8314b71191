"""The calls of a sandbox's review (``commit="manual"``: docs/review.md): its changes listed,
shown as a diff, committed, discarded; checkpoints of them; forks. And what a sandbox did
on the network (docs/network.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager

from .. import _convert as convert
from .._proto.sandbox import v1 as pb
from ..errors import InvalidConfigurationError
from ..types import Checkpoint, CommitResult, FileChange, NetworkConnection, SandboxInfo
from . import _rpcs as rpcs
from ._events import EventStream
from ._request_parts import review_paths
from ._rpcs import Rep, Req, ServerStream, Unary


class ReviewCalls:
    """Part of :class:`AsyncSandboxClient`."""

    async def _unary(
        self, rpc: Unary[Req, Rep], request: Req, *, timeout: float | None = None
    ) -> Rep:
        raise NotImplementedError  # (the client's)

    def _own_server_stream(
        self, rpc: ServerStream[Req, Rep], request: Req
    ) -> AbstractAsyncContextManager[AsyncIterator[Rep]]:
        raise NotImplementedError  # (the client's)

    async def get_network_log(self, sandbox_id: str, after: int = 0) -> list[NetworkConnection]:
        """The connections the sandbox made through its proxy and the lookups it tried,
        oldest first: the last the server keeps (1,000 by default), only those numbered
        above ``after`` (a ``seq`` seen before) when given. Empty for a sandbox with no
        network (docs/network.md)."""
        if after < 0:
            raise InvalidConfigurationError("after must not be negative")
        request = pb.GetNetworkLogRequest(sandbox_id=sandbox_id, after=after)
        reply = await self._unary(rpcs.GET_NETWORK_LOG, request)
        return [convert.network_connection_from_pb(entry) for entry in reply.connections]

    async def list_changes(
        self, sandbox_id: str, paths: Iterable[str] | str | None = None
    ) -> list[FileChange]:
        """Where the sandbox's files differ from its codebase's, at or below ``paths``
        (None: everywhere), by path; paths are relative to /workspace. At most the server's
        maximum (50,000 by default): narrow ``paths`` to see the rest."""
        request = pb.ListChangesRequest(sandbox_id=sandbox_id, paths=review_paths(paths))
        reply = await self._unary(rpcs.LIST_CHANGES, request)
        return [convert.change_from_pb(change) for change in reply.changes]

    async def diff_changes(
        self,
        sandbox_id: str,
        paths: Iterable[str] | str | None = None,
        *,
        max_bytes: int | None = None,
    ) -> str:
        """The sandbox's changes as a unified diff (git's format: ``a/`` is the codebase,
        ``b/`` the sandbox); cut at ``max_bytes`` (the server's default: 1 MiB) with a
        last line saying so. Binary and large files are summarised in a line."""
        if max_bytes is not None and max_bytes <= 0:
            raise InvalidConfigurationError("max_bytes must be positive")
        request = pb.DiffChangesRequest(
            sandbox_id=sandbox_id, paths=review_paths(paths), max_bytes=max_bytes or 0
        )
        reply = await self._unary(rpcs.DIFF_CHANGES, request)
        text = reply.diff.decode("utf-8", "surrogateescape")
        if reply.truncated:
            text += "[diff truncated: ask for fewer paths, or a larger max_bytes]\n"
        return text

    async def commit_changes(
        self,
        sandbox_id: str,
        paths: Iterable[str] | str | None = None,
        *,
        overwrite: bool = False,
    ) -> CommitResult:
        """Apply the sandbox's changes at or below ``paths`` (None: all) to its codebase,
        each file atomically. Under ``commit="manual"`` a path the codebase changed since
        the sandbox first changed it is a conflict: left in the sandbox, reported, never
        overwritten unless ``overwrite``."""
        chosen = review_paths(paths)
        if paths is not None and not chosen:
            return CommitResult()
        request = pb.CommitChangesRequest(sandbox_id=sandbox_id, paths=chosen, overwrite=overwrite)
        return convert.commit_result_from_pb(await self._unary(rpcs.COMMIT_CHANGES, request))

    async def discard_changes(
        self, sandbox_id: str, paths: Iterable[str] | str | None = None
    ) -> list[str]:
        """Give the sandbox back its codebase's files at or below ``paths`` (None: all of
        them); the paths whose changes were discarded."""
        chosen = review_paths(paths)
        if paths is not None and not chosen:
            return []
        request = pb.DiscardChangesRequest(sandbox_id=sandbox_id, paths=chosen)
        return list((await self._unary(rpcs.DISCARD_CHANGES, request)).discarded)

    # -- checkpoints and forks ---------------------------------------------------------------

    async def create_checkpoint(self, sandbox_id: str, name: str = "") -> Checkpoint:
        """Capture a manual sandbox's changes (its files, not its processes)."""
        request = pb.CreateCheckpointRequest(sandbox_id=sandbox_id, name=name)
        return convert.checkpoint_from_pb(await self._unary(rpcs.CREATE_CHECKPOINT, request))

    async def list_checkpoints(self, sandbox_id: str) -> list[Checkpoint]:
        """A sandbox's checkpoints, oldest first."""
        request = pb.ListCheckpointsRequest(sandbox_id=sandbox_id)
        reply = await self._unary(rpcs.LIST_CHECKPOINTS, request)
        return [convert.checkpoint_from_pb(c) for c in reply.checkpoints]

    async def restore_checkpoint(self, sandbox_id: str, checkpoint_id: str) -> Checkpoint:
        """Make the sandbox's changes what they were at the checkpoint (its processes go on
        running, and see its files change under them)."""
        request = pb.RestoreCheckpointRequest(sandbox_id=sandbox_id, checkpoint_id=checkpoint_id)
        return convert.checkpoint_from_pb(await self._unary(rpcs.RESTORE_CHECKPOINT, request))

    async def delete_checkpoint(self, sandbox_id: str, checkpoint_id: str) -> None:
        """Delete a checkpoint (the sandbox's files stay as they are)."""
        request = pb.DeleteCheckpointRequest(sandbox_id=sandbox_id, checkpoint_id=checkpoint_id)
        await self._unary(rpcs.DELETE_CHECKPOINT, request)

    async def fork_sandbox(self, sandbox_id: str, *, start: bool = True) -> SandboxInfo:
        """A new sandbox like this one (codebase, rules, limits, runtime, image, labels,
        commit mode) whose changes start as a copy of its changes; started unless told not."""
        request = pb.ForkSandboxRequest(sandbox_id=sandbox_id, start=start)
        return convert.sandbox_from_pb(await self._unary(rpcs.FORK_SANDBOX, request))

    # -- events ---------------------------------------------------------------------------

    def watch_events(self, sandbox_id: str, *, after: int = 0) -> EventStream:
        """What the sandbox's commands do to its files and what its permissions refuse, as
        it happens (``after``: resume after that event's ``seq``; 0: from now on). On a
        connection of its own: a watch not read for a while holds up no other call."""
        request = pb.WatchEventsRequest(sandbox_id=sandbox_id, after=after)
        return EventStream._create(lambda: self._own_server_stream(rpcs.WATCH_EVENTS, request))
