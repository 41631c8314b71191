"""The baselines: a raw ``bwrap ... true``, a raw lifecycle, and a raw loopback echo.

The raw steps are plain blocking calls wrapped as coroutines, so that they interleave with our
measurements on the same event loop (nothing else runs on it while they block).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import sniffio
import trio

from agentfense.runtimes.bwrap import bwrap_isolation_args

from ._timing import Step

# About the size of a GetSandbox request and its reply on the wire.
ECHO_PAYLOAD = b"x" * 64


def raw_bwrap_argv(
    etc_dir: Path, workspace: Path, command: Sequence[str] = ("/bin/true",)
) -> list[str]:
    """``bwrap`` with the server's isolation, ``workspace`` read-only, running ``command``."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise RuntimeError("bubblewrap (bwrap) is not installed")
    return [
        bwrap,
        *bwrap_isolation_args(etc_dir),
        "--ro-bind",
        str(workspace),
        "/workspace",
        "--remount-ro",
        "/",
        "--chdir",
        "/workspace",
        "--",
        *command,
    ]


def _run_checked(argv: list[str]) -> None:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"raw bwrap failed ({done.returncode}): {done.stderr[-500:]!r}")


def raw_bwrap(etc_dir: Path, workspace: Path) -> Step:
    """A fresh ``bwrap ... /bin/true`` per call (a subprocess with captured output)."""
    argv = raw_bwrap_argv(etc_dir, workspace)

    async def step() -> None:
        _run_checked(argv)

    return step


def raw_lifecycle(etc_dir: Path, project: Path, scratch: Path) -> Step:
    """The lifecycle's own work done directly: copy the project, ``bwrap ... true`` on it, rm."""
    copy = scratch / "workspace"
    argv = raw_bwrap_argv(etc_dir, copy)

    async def step() -> None:
        shutil.copytree(project, copy)
        try:
            _run_checked(argv)
        finally:
            shutil.rmtree(copy)

    return step


@contextlib.asynccontextmanager
async def open_echo(path: Path) -> AsyncIterator[Step]:
    """A unix-socket echo server and a connected client, on the current backend's own I/O.

    Yields one request/response round trip as a step.
    """
    if sniffio.current_async_library() == "trio":
        async with _trio_echo(path) as step:
            yield step
    else:
        async with _asyncio_echo(path) as step:
            yield step


@contextlib.asynccontextmanager
async def _asyncio_echo(path: Path) -> AsyncIterator[Step]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, str(path))
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:

            async def step() -> None:
                writer.write(ECHO_PAYLOAD)
                await writer.drain()
                await reader.readexactly(len(ECHO_PAYLOAD))

            yield step
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def _trio_echo(path: Path) -> AsyncIterator[Step]:
    listening = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listening.bind(str(path))
    listening.listen()
    listener = trio.SocketListener(listening)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            async for data in stream:
                await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        async with await trio.open_unix_socket(str(path)) as client:

            async def step() -> None:
                await client.send_all(ECHO_PAYLOAD)
                received = 0
                while received < len(ECHO_PAYLOAD):
                    chunk = await client.receive_some(len(ECHO_PAYLOAD) - received)
                    if not chunk:
                        raise RuntimeError("the echo server closed the connection")
                    received += len(chunk)

            yield step
        nursery.cancel_scope.cancel()
