"""The raw and packet sockets a sandbox's processes try to open: each one refused (EPERM, as
the kernel would refuse it: they have no CAP_NET_RAW) and reported, so that the network log
says it happened.

Every command of a sandbox with a network starts under the seccomp filter of
``runtimes/raw_sockets.c``, whose listener the runtime hands here (``RawSocketWatches.give``).
Such a socket() waits until it is answered. A listener is watched until no process uses its
filter any more (the kernel then says POLLHUP), or the sandbox stops. ``attempt`` and the
struct layouts are pure.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import select
import socket
import struct
from collections.abc import Callable

import anyio

_log = logging.getLogger("agentfense.server.network")

# struct seccomp_notif: id, pid, flags, then struct seccomp_data: nr, arch,
# instruction_pointer, args[6]; struct seccomp_notif_resp: id, val, error, flags.
_NOTIF = struct.Struct("=QIIiIQ6Q")
_RESPONSE = struct.Struct("=QqiI")
_IOWR = 3 << 30
_MAGIC = ord("!") << 8
SECCOMP_IOCTL_NOTIF_RECV = _IOWR | _NOTIF.size << 16 | _MAGIC | 0
SECCOMP_IOCTL_NOTIF_SEND = _IOWR | _RESPONSE.size << 16 | _MAGIC | 1
_CONTINUE = 1  # SECCOMP_USER_NOTIF_FLAG_CONTINUE
_SOCK_PACKET = 10
_FAMILIES: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
RAW_KINDS = ("raw-socket", "packet-socket")
_MOST = 256  # listeners waiting to be watched (a command makes one; more are closed)
_PER_SECOND = 200  # attempts answered a second, per sandbox (the callers wait meanwhile)

# (kind, reason): a refused attempt, for the log
Report = Callable[[str, str], None]


def attempt(args: tuple[int, ...]) -> tuple[str, str] | None:
    """What a socket() of ``args`` (domain, type, protocol) tried, as a kind and a reason;
    None for a socket the filter does not stop."""
    domain, kind, protocol = args[0] & 0xFFFFFFFF, args[1] & 0xF, args[2] & 0xFFFFFFFF
    if domain == socket.AF_PACKET:
        return "packet-socket", (
            "a packet socket (the sandbox reaches the network only through its proxy)"
        )
    if domain in _FAMILIES and kind in (socket.SOCK_RAW, _SOCK_PACKET):
        return "raw-socket", (
            f"a raw {_FAMILIES[domain]} socket of protocol {protocol} (the sandbox reaches "
            "the network only through its proxy)"
        )
    return None


def response(notification: int, error: int) -> bytearray:
    """The answer to a notification: fail with ``error``, or (0) let the call go on."""
    return bytearray(_RESPONSE.pack(notification, 0, -error, 0 if error else _CONTINUE))


class RawSocketWatches:
    """The listeners of one running sandbox's commands, each watched in :meth:`serve`."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._send, self._receive = anyio.create_memory_object_stream[int](math.inf)
        self._waiting = 0
        self._next = 0.0  # when the next attempt may be answered

    def give(self, listener: int) -> None:
        """Watch ``listener`` (this owns it) from now until its filter is unused."""
        if self._waiting >= _MOST:
            os.close(listener)  # (its socket() calls fail with ENOSYS: refused, unlogged)
            return
        try:
            self._send.send_nowait(listener)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            os.close(listener)  # (the sandbox stopped)
            return
        self._waiting += 1

    async def serve(self) -> None:
        """Until cancelled; every listener it watches is closed then (a socket() waiting on
        one fails with ENOSYS)."""
        async with anyio.create_task_group() as tg:
            async for listener in self._receive:
                self._waiting -= 1
                tg.start_soon(self._watch, listener)

    def close(self) -> None:
        """No more listeners: those given and not yet watched are closed, and any given
        later."""
        self._send.close()
        while True:
            try:
                os.close(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        self._receive.close()

    async def _watch(self, listener: int) -> None:
        try:
            ready = select.poll()
            ready.register(listener, select.POLLIN)
            while True:
                await anyio.wait_readable(listener)
                events = ready.poll(0)
                if not any(mask & select.POLLIN for _, mask in events):
                    if events:  # POLLHUP alone: no process uses the filter any more
                        return
                    continue
                await self._pace()
                self._answer(listener)
        except OSError as exc:  # (not expected: the listener is given up, its calls ENOSYS)
            _log.warning("a sandbox's raw-socket watch failed: %s", exc)
        finally:
            os.close(listener)

    async def _pace(self) -> None:
        now = anyio.current_time()
        if self._next > now:
            await anyio.sleep(self._next - now)
        self._next = max(now, self._next) + 1 / _PER_SECOND

    def _answer(self, listener: int) -> None:
        """Receive one notification (one waits: the poll said so) and answer it."""
        buffer = bytearray(_NOTIF.size)
        try:
            fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buffer, True)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR):  # (its caller was killed meanwhile)
                return
            raise
        notification, _pid, _flags, _nr, _arch, _ip, *args = _NOTIF.unpack(buffer)
        tried = attempt(tuple(args))
        answer = response(notification, 0 if tried is None else errno.EPERM)
        with contextlib.suppress(OSError):  # (ENOENT: its caller was killed meanwhile)
            fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, answer, True)
        if tried is not None:
            self._report(*tried)
