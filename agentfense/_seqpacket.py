"""Framed messages on a SOCK_SEQPACKET socket between the server and a process it started
(the fs process, a sandbox's agent): bounded in size, descriptors with SCM_RIGHTS.

A datagram is a frame. One that is longer than the reader takes, or that brings more
descriptors than it takes, is a :class:`FrameError`, never cut short in silence (the kernel
would), and the descriptors that came with it are closed. An empty datagram cannot be told
from the end of the stream: no framing here sends one.

Two framings. The agent's is fixed (it is stdlib-only and run from source): one message, one
datagram (:func:`send`, :func:`receive`). The fs control channel's (:class:`Channel`): a
message is one or more datagrams, each starting with ``+`` (more follows) or ``.`` (the
last), so a message of any size up to a bound is delivered; its descriptors ride on its
first datagram.

Blocking sockets use the plain calls; non-blocking ones, in an anyio task, the ``_async``
ones, which wait for the socket instead of failing with BlockingIOError.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import Sequence

import anyio

_FD_SIZE = array.array("i").itemsize
# As plain ints: an IntFlag's ``&`` runs Python code, twice per datagram on the exec path.
_TRUNC, _CTRUNC = int(socket.MSG_TRUNC), int(socket.MSG_CTRUNC)


class FrameError(ValueError):
    """What came on the socket is not a frame of its channel (the sentence says why)."""


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def send(sock: socket.socket, datagram: bytes, fds: Sequence[int] = ()) -> None:
    """Send one datagram (with ``fds``); BlockingIOError if a non-blocking socket is full."""
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sock.sendmsg([datagram], ancillary)
    else:
        sock.sendmsg([datagram])


async def send_async(sock: socket.socket, datagram: bytes, fds: Sequence[int] = ()) -> None:
    while True:
        try:
            send(sock, datagram, fds)
        except BlockingIOError:
            await anyio.wait_writable(sock)
        else:
            return


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % _FD_SIZE])
    return list(fds)


def receive(sock: socket.socket, *, most: int, max_fds: int = 0) -> tuple[bytes, list[int]]:
    """The next datagram (``b""`` at the end of the stream) and the descriptors that came
    with it; BlockingIOError if a non-blocking socket has none yet."""
    data, ancillary, flags, _ = sock.recvmsg(most, socket.CMSG_SPACE(max(max_fds, 1) * _FD_SIZE))
    fds = _fds(ancillary)
    problem = ""
    if flags & _TRUNC:
        problem = f"a datagram longer than {most} bytes"
    elif flags & _CTRUNC or len(fds) > max_fds:
        problem = f"a datagram with more than {max_fds} descriptors"
    if problem:
        close_all(fds)
        raise FrameError(problem)
    return data, fds


async def receive_async(
    sock: socket.socket, *, most: int, max_fds: int = 0
) -> tuple[bytes, list[int]]:
    while True:
        await anyio.wait_readable(sock)
        try:
            return receive(sock, most=most, max_fds=max_fds)
        except BlockingIOError:
            continue


CHUNK = 60 * 1024  # a datagram's payload on a Channel: well under any socket's buffer
_MORE, _LAST = b"+", b"."


def frames(payload: bytes) -> list[bytes]:
    """``payload`` as the datagrams of a :class:`Channel`."""
    chunks = [payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)] or [b""]
    return [(_LAST if i == len(chunks) - 1 else _MORE) + c for i, c in enumerate(chunks)]


class Channel:
    """One end of a chunked channel: messages of at most ``most`` bytes, each bringing at
    most ``max_fds`` descriptors. Senders are kept apart by the caller (a message's
    datagrams must not interleave with another's); one task or thread receives."""

    def __init__(self, sock: socket.socket, *, most: int, max_fds: int = 0) -> None:
        self.sock = sock
        self._most = most
        self._max_fds = max_fds
        self._parts: list[bytes] = []
        self._size = 0
        self._fds: list[int] = []

    def send(self, payload: bytes, fds: Sequence[int] = ()) -> None:
        """Send one message on a blocking socket."""
        self._check(payload, fds)
        for index, datagram in enumerate(frames(payload)):
            send(self.sock, datagram, fds if index == 0 else ())

    async def send_async(self, payload: bytes, fds: Sequence[int] = ()) -> None:
        """Send one message on a non-blocking socket (the task is never cancelled midway:
        the caller shields it, or the channel is done for)."""
        self._check(payload, fds)
        for index, datagram in enumerate(frames(payload)):
            await send_async(self.sock, datagram, fds if index == 0 else ())

    def _check(self, payload: bytes, fds: Sequence[int]) -> None:
        if len(payload) > self._most:
            raise FrameError(f"a message of {len(payload)} bytes; at most {self._most} are sent")
        if len(fds) > self._max_fds:
            raise FrameError(f"a message with {len(fds)} descriptors; at most {self._max_fds}")

    def receive(self) -> tuple[bytes, list[int]] | None:
        """The next message and its descriptors from a blocking socket; None at the end."""
        while True:
            datagram, fds = receive(self.sock, most=CHUNK + 1, max_fds=self._max_fds)
            message = self._add(datagram, fds)
            if message is not None or not datagram:
                return message

    async def receive_async(self) -> tuple[bytes, list[int]] | None:
        """The next message and its descriptors from a non-blocking socket; None at the end."""
        while True:
            datagram, fds = await receive_async(self.sock, most=CHUNK + 1, max_fds=self._max_fds)
            message = self._add(datagram, fds)
            if message is not None or not datagram:
                return message

    def _add(self, datagram: bytes, fds: list[int]) -> tuple[bytes, list[int]] | None:
        """The message ``datagram`` completes, if it does (none at the end of the stream)."""
        self._fds += fds
        problem = ""
        if not datagram:  # the end of the stream
            problem = "a message cut short by the end of the stream" if self._parts else ""
        elif datagram[:1] not in (_MORE, _LAST):
            problem = "a datagram that is no frame of this channel"
        elif self._size + len(datagram) - 1 > self._most:
            problem = f"a message longer than {self._most} bytes"
        elif len(self._fds) > self._max_fds:
            problem = f"a message with more than {self._max_fds} descriptors"
        if problem:
            close_all(self._fds)
            self._fds, self._parts, self._size = [], [], 0
            raise FrameError(problem)
        if not datagram:
            return None
        self._parts.append(datagram[1:])
        self._size += len(datagram) - 1
        if datagram[:1] == _MORE:
            return None
        payload, fds = b"".join(self._parts), self._fds
        self._fds, self._parts, self._size = [], [], 0
        return payload, fds
