"""The proxy's sockets, used as they are: non-blocking, awaited with ``anyio.wait_readable``
and ``wait_writable`` (anyio's streams read on asyncio through transports, which would
stand between a socket and ``splice``).

What a sandbox downloads moves by ``splice`` through a pipe, from the upstream socket to the
sandbox's, without being copied into the server (a 100 MiB download: 1.7x the host's time
through userspace copies, see tests/bench/_network.py); what it sends, by ``recv`` and
``send``. A connection thus holds four descriptors: its two sockets, one pipe.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Awaitable, Callable

import anyio

CHUNK = 256 * 1024  # bytes moved per read or splice
_PIPE_BYTES = 256 * 1024  # (F_SETPIPE_SZ: fewer splices than the default 64 KiB)
_F_SETPIPE_SZ = 1031
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class Conn:
    """One TCP connection of the proxy's (it owns the socket)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    async def receive(self, most: int = CHUNK) -> bytes:
        """Up to ``most`` bytes; b"" at the end of the stream, or when it broke."""
        while True:
            try:
                return self.sock.recv(most)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
            except OSError:
                return b""

    async def send_all(self, data: bytes) -> None:
        """All of ``data`` (OSError when the connection broke)."""
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.sock)

    def send_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    async def splice_to(
        self, sink: Conn, before: Callable[[int], Awaitable[None]], moved: Callable[[int], None]
    ) -> None:
        """Everything this connection receives, into ``sink``, until its end (or either
        breaks): ``before(n)`` is awaited with each piece before it goes on (the rate),
        ``moved(n)`` told once it has."""
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_BYTES)
            while True:
                try:
                    count = os.splice(self.sock.fileno(), write_end, CHUNK, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await anyio.wait_readable(self.sock)
                    continue
                except OSError:
                    return
                if count == 0:
                    return
                await before(count)
                left = count
                while left:
                    try:
                        left -= os.splice(read_end, sink.sock.fileno(), left, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        await anyio.wait_writable(sink.sock)
                    except OSError:  # (the sink is gone: EPIPE, ECONNRESET)
                        return
                moved(count)
        finally:
            os.close(read_end)
            os.close(write_end)


async def connect(address: str, port: int) -> Conn:
    """A TCP connection to an address (no lookup)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # (a host gone silent is found out, and its connection's slot given back)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        try:
            sock.connect((address, port))
        except BlockingIOError:
            await anyio.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error)) from None
        return Conn(sock)
    except BaseException:
        sock.close()
        raise


async def accept(listener: socket.socket) -> Conn:
    """The next connection to ``listener`` (non-blocking); OSError as ``accept`` raises it."""
    while True:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            await anyio.wait_readable(listener)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Conn(sock)


async def receive_datagram(sock: socket.socket) -> tuple[bytes, tuple[str, int]]:
    while True:
        try:
            data, peer = sock.recvfrom(4096)
        except BlockingIOError:
            await anyio.wait_readable(sock)
        else:
            return data, peer
