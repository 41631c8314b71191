"""A real grpclib server in front of a real AgentFense server that behaves as the upstream Go
server does where the SDK must not be fooled: it has only the ``sandbox.v1`` RPCs of the wire
contract (AgentFense's extensions — the sandbox-file RPCs, UploadArchive — are UNIMPLEMENTED),
its Exec drops the request's stdin, it refuses a codebase without an owner, and it asks for no
API token. Everything else is forwarded as is (with the AgentFense server's local owner's
token: the proxy runs as the server's user), so sandboxes are real ones."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Server, Stream

from agentfense._local_token import read_local_token
from agentfense._proto.sandbox import v1 as pb

EXTENSIONS = frozenset(
    {
        "/sandbox.v1.CodebaseService/UploadArchive",
        "/sandbox.v1.SandboxService/ReadSandboxFile",
        "/sandbox.v1.SandboxService/WriteSandboxFile",
        "/sandbox.v1.SandboxService/ListSandboxFiles",
    }
)


def _as_upstream(path: str, request: Any) -> Any:
    """The request as the upstream server acts on it."""
    if path.endswith("/Exec") or path.endswith("/ExecStream"):
        request.stdin = ""  # dropped on the floor
    if path.endswith("/CreateCodebase") and not request.owner_id:
        raise GRPCError(Status.INVALID_ARGUMENT, "owner_id is required")
    if path.endswith("/CreateSandbox"):
        request.start = False  # (an extension: a field it does not know, so never acts on)
    return request


class _Forward:
    """Every RPC of the wire contract, forwarded over ``channel``."""

    def __init__(self, channel: Channel, token: str | None) -> None:
        self._channel = channel
        self._metadata = {"authorization": f"Bearer {token}"} if token else None

    def __mapping__(self) -> dict[str, Handler]:
        mapping: dict[str, Handler] = {}
        for service in (pb.CodebaseServiceBase(), pb.SandboxServiceBase()):
            for path, handler in service.__mapping__().items():
                if path not in EXTENSIONS:
                    forward = partial(self._forward, path, handler)
                    mapping[path] = Handler(
                        forward, handler.cardinality, handler.request_type, handler.reply_type
                    )
        return mapping

    async def _forward(self, path: str, handler: Handler, stream: Stream[Any, Any]) -> None:
        unary_in = handler.cardinality in (Cardinality.UNARY_UNARY, Cardinality.UNARY_STREAM)
        async with self._channel.request(
            path,
            handler.cardinality,
            handler.request_type,
            handler.reply_type,
            metadata=self._metadata,
        ) as upstream:
            if unary_in:
                request = _as_upstream(path, await stream.recv_message())
                await upstream.send_message(request, end=True)
            else:
                while (message := await stream.recv_message()) is not None:
                    await upstream.send_message(message)
                await upstream.end()
            while (reply := await upstream.recv_message()) is not None:
                await stream.send_message(reply)


class UpstreamLike:
    """Serves on the unix socket ``socket_path``, forwarding to ``target`` (a unix socket)."""

    def __init__(self, socket_path: str, target: str) -> None:
        self.endpoint = f"unix:{socket_path}"
        self._path = socket_path
        self._target = target
        self._ready = threading.Event()
        self._stop: Callable[[], object] | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the upstream-like server did not start")

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
        self._thread.join(10)

    async def _main(self) -> None:
        channel = Channel(path=self._target)
        server = Server([_Forward(channel, read_local_token(f"unix:{self._target}"))])
        await server.start(path=self._path)
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        self._stop = partial(loop.call_soon_threadsafe, stop.set)
        self._ready.set()
        try:
            await stop.wait()
            # grpclib closes no connection at close: let the clients' own closes arrive first
            # (they are under way when a test ends), so none is left open with the loop.
            await asyncio.sleep(0.5)
        finally:
            server.close()
            await asyncio.wait_for(server.wait_closed(), 10)
            channel.close()
