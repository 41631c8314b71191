"""The raw and packet sockets a sandbox's processes try to open: each one refused (EPERM, as
the kernel would refuse it: they have no CAP_NET_RAW) and reported, so that the network log
says it happened.

Every command of a sandbox with a network starts under the seccomp filter of
``runtimes/raw_sockets.c``, whose listener the runtime hands here (``RawSocketWatches.give``).
Such a socket() waits until it is answered. A listener is watched while its command runs,
then while processes it left use the filter (the kernel says POLLHUP when none does), but
only for the last :data:`_KEPT_AFTER` commands that ended: each listener is a descriptor of
the server's, and leftovers must not pin one each (300 background processes held 300). The
older ones go :data:`_SETTLE` seconds after a command ends: a command that left nothing
holds its filter a moment longer (its guard, its launcher), and must not push out the watch
of one that left something.
Those of older commands are closed; what their leftovers try then fails with ENOSYS,
unlogged. All go when the sandbox stops. ``attempt`` and the struct layouts are pure.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import select
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc

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
_KEPT_AFTER = 4  # listeners of commands that ended, kept for what they left running
_SETTLE = 2.0  # seconds after a command's end before the oldest such listeners go
_PER_SECOND = 200  # attempts answered a second, per sandbox (the callers wait meanwhile)

# (kind, reason): a refused attempt, for the log
Report = Callable[[str, str], None]


@dataclass(eq=False)
class _Watch:
    listener: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: bool = False  # (its listener closed: no process used the filter any more)


def attempt(args: tuple[int, ...]) -> tuple[str, str] | None:
    """What a socket() of ``args`` (domain, type, protocol) tried, as a kind and a reason;
    None for a socket the filter does not stop."""
    domain, kind, protocol = args[0] & 0xFFFFFFFF, args[1] & 0xF, args[2] & 0xFFFFFFFF
    if domain == socket.AF_PACKET or (domain in _FAMILIES and kind == _SOCK_PACKET):
        return "packet-socket", (  # (SOCK_PACKET: a packet socket of old)
            "a packet socket (the sandbox reaches the network only through its proxy)"
        )
    if domain in _FAMILIES and kind == socket.SOCK_RAW:
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
        self._send, self._receive = anyio.create_memory_object_stream[_Watch](_MOST)
        self._ended: deque[_Watch] = deque()  # of commands that ended, oldest first
        self._task_group: anyio.abc.TaskGroup | None = None  # (while it serves)
        self._next = 0.0  # when the next attempt may be answered

    def give(self, listener: int) -> Callable[[], None]:
        """Watch ``listener`` (this owns it) from now until its filter is unused; what to
        call when its command's own process has ended."""
        watch = _Watch(listener)
        try:
            self._send.send_nowait(watch)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            # (too many waiting, or the sandbox stopped: its calls fail with ENOSYS, unlogged)
            os.close(listener)
            return _nothing
        return functools.partial(self._command_ended, watch)

    def _command_ended(self, watch: _Watch) -> None:
        if watch.done:  # (its command left nothing running)
            return
        self._ended.append(watch)
        if self._task_group is not None:
            self._task_group.start_soon(self._settle)

    async def _settle(self) -> None:
        await anyio.sleep(_SETTLE)
        while len(self._ended) > _KEPT_AFTER:  # (those that ended by now are gone from it)
            self._ended.popleft().scope.cancel()

    async def serve(self) -> None:
        """Until cancelled; every listener it watches is closed then (a socket() waiting on
        one fails with ENOSYS)."""
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            async for watch in self._receive:
                tg.start_soon(self._watch, watch)

    def close(self) -> None:
        """No more listeners: those given and not yet watched are closed, and any given
        later."""
        self._send.close()
        while True:
            try:
                watch = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            os.close(watch.listener)
            watch.done = True
        self._receive.close()

    async def _watch(self, watch: _Watch) -> None:
        listener = watch.listener
        try:
            with watch.scope:
                await self._answer_until_unused(listener)
        except OSError as exc:  # (not expected: the listener is given up, its calls ENOSYS)
            _log.warning("a sandbox's raw-socket watch failed: %s", exc)
        finally:
            os.close(listener)
            watch.done = True
            with contextlib.suppress(ValueError):
                self._ended.remove(watch)

    async def _answer_until_unused(self, listener: int) -> None:
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


def _nothing() -> None:
    pass
