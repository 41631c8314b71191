"""A real grpclib server that answers lookups but sits on every cleanup call (destroying a
sandbox or a session, deleting a codebase) for :data:`HANG` seconds, in its own thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from grpclib.server import Server

from agentfense._proto.sandbox import v1 as pb

HANG = 20.0  # far longer than a test waits: a client without a deadline is seen waiting


class _Sandboxes(pb.SandboxServiceBase):
    def __init__(self, server: SilentServer) -> None:
        self._server = server

    async def get_sandbox(self, get_sandbox_request: pb.GetSandboxRequest) -> pb.Sandbox:
        return pb.Sandbox(
            id=get_sandbox_request.sandbox_id,
            codebase_id="cb_silent",
            status=pb.SandboxStatus(pb.SandboxStatus.RUNNING),
        )

    async def create_session(self, create_session_request: pb.CreateSessionRequest) -> pb.Session:
        return pb.Session(
            id="ss_silent",
            sandbox_id=create_session_request.sandbox_id,
            status=pb.SessionStatus(pb.SessionStatus.ACTIVE),
            shell="/bin/sh",
        )

    async def destroy_sandbox(self, destroy_sandbox_request: pb.DestroySandboxRequest) -> pb.Empty:
        return await self._server.sit("DestroySandbox")

    async def destroy_session(self, destroy_session_request: pb.DestroySessionRequest) -> pb.Empty:
        return await self._server.sit("DestroySession")


class _Codebases(pb.CodebaseServiceBase):
    def __init__(self, server: SilentServer) -> None:
        self._server = server

    async def delete_codebase(self, delete_codebase_request: pb.DeleteCodebaseRequest) -> pb.Empty:
        return await self._server.sit("DeleteCodebase")


class SilentServer:
    """Serves on a unix socket at ``socket_path`` until :meth:`stop`; ``asked`` lists the
    cleanup calls it received."""

    def __init__(self, socket_path: str) -> None:
        self.endpoint = f"unix:{socket_path}"
        self.asked: list[str] = []
        self._path = socket_path
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def sit(self, name: str) -> pb.Empty:
        """Sit on the call for HANG seconds, or until the server stops (so that it closes
        its connections then: a sitter left running held one open past the test)."""
        self.asked.append(name)
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), HANG)
        return pb.Empty()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the silent test server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        server = Server([_Sandboxes(self), _Codebases(self)])
        await server.start(path=self._path)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            await asyncio.wait_for(server.wait_closed(), 10)
