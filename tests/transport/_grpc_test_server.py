"""A real grpclib server, in its own thread and asyncio loop, for the transport tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import betterproto
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.server import Server

from agentfense._proto.sandbox.v1 import (
    CodebaseServiceBase,
    ExecOutput,
    ExecRequest,
    GetSandboxRequest,
    Sandbox,
    SandboxServiceBase,
    UploadChunk,
    UploadResult,
)


@dataclass
class Observed:
    """What the handlers saw; written on the server thread, read by the tests."""

    started: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancelled_count: int = 0
    max_threads: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    upload_chunks: int = 0

    async def hang(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled_count += 1
            self.cancelled.set()
            raise


class SandboxService(SandboxServiceBase):
    def __init__(self, observed: Observed) -> None:
        self.observed = observed

    async def get_sandbox(self, get_sandbox_request: GetSandboxRequest) -> Sandbox:
        sandbox_id = get_sandbox_request.sandbox_id
        if sandbox_id.startswith("missing"):
            raise GRPCError(Status.NOT_FOUND, f"sandbox {sandbox_id} not found")
        if sandbox_id == "hang":
            await self.observed.hang()
        if sandbox_id.startswith("slow"):
            observed = self.observed
            observed.max_threads = max(observed.max_threads, threading.active_count())
            observed.in_flight += 1
            observed.max_in_flight = max(observed.max_in_flight, observed.in_flight)
            try:
                await asyncio.sleep(1.0)  # (all 50 of a test overlap even on a loaded machine)
            finally:
                observed.in_flight -= 1
        return Sandbox(id=sandbox_id)

    async def exec_stream(self, exec_request: ExecRequest) -> AsyncIterator[ExecOutput]:
        """``command`` is how many chunks to send; then ``stdin`` says what happens."""
        for i in range(int(exec_request.command)):
            yield ExecOutput(data=str(i).encode())
        if exec_request.stdin == "hang":
            await self.observed.hang()
        if exec_request.stdin == "fail":
            raise GRPCError(Status.NOT_FOUND, "sandbox sb_gone not found")


class CodebaseService(CodebaseServiceBase):
    def __init__(self, observed: Observed) -> None:
        self.observed = observed

    async def upload_files(self, upload_chunk_iterator: AsyncIterator[UploadChunk]) -> UploadResult:
        file_path = ""
        size = 0
        try:
            async for chunk in upload_chunk_iterator:
                kind, _ = betterproto.which_one_of(chunk, "content")
                if kind == "metadata":
                    file_path = chunk.metadata.file_path
                else:
                    size += len(chunk.data)
                    self.observed.upload_chunks += 1
        except asyncio.CancelledError:
            self.observed.cancelled.set()
            raise
        return UploadResult(file_path=file_path, size=size)


class ServerThread:
    """Serves both services on ``kind`` ("unix" or "tcp") until :meth:`stop`."""

    def __init__(self, kind: str, socket_path: str) -> None:
        self.observed = Observed()
        self._kind = kind
        self._socket_path = socket_path
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.endpoint = ""
        self._thread = threading.Thread(target=self._run, name="test-grpc-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        server = Server([SandboxService(self.observed), CodebaseService(self.observed)])
        if self._kind == "unix":
            await server.start(path=self._socket_path)
            self.endpoint = f"unix:{self._socket_path}"
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            self.endpoint = f"127.0.0.1:{sock.getsockname()[1]}"
            await server.start(sock=sock)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            await asyncio.wait_for(server.wait_closed(), 10)
