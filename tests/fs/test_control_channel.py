"""The framing of the fs control channel (``agentfense._seqpacket.Channel``) on real
SOCK_SEQPACKET socket pairs, no fs process: a message of any size arrives whole with its
descriptor, and whatever is no frame, too long or brings too many descriptors is refused with
a FrameError, never cut short in silence, with the descriptors that came along closed."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import anyio
import pytest

from agentfense import _seqpacket
from agentfense._seqpacket import CHUNK, Channel, FrameError
from agentfense.fs import control


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        yield ours, theirs


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def test_a_message_of_many_datagrams_arrives_whole_with_its_descriptor(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    payload = bytes(range(256)) * (3 * CHUNK // 256 + 7)  # four datagrams
    read, write = os.pipe()
    try:
        control.channel(ours).send(payload, (write,))
        control.channel(ours).send(b"")  # an empty message is a message, not the end
        receiver = control.channel(theirs)
        received = receiver.receive()
        assert received is not None
        assert received[0] == payload
        (copy,) = received[1]
        os.write(copy, b"through the copy")
        os.close(copy)
        assert os.read(read, 100) == b"through the copy"
        assert receiver.receive() == (b"", [])
        ours.shutdown(socket.SHUT_WR)
        assert receiver.receive() is None
    finally:
        os.close(read)
        os.close(write)


def _refused_by(channel: Channel, *words: str) -> None:
    with pytest.raises(FrameError) as caught:
        channel.receive()
    for word in words:
        assert word in str(caught.value)


def test_what_is_no_frame_is_refused_and_its_descriptors_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    receiver = control.channel(theirs)
    before = _open_fds()
    read, write = os.pipe()
    extra = os.dup(read)
    _seqpacket.send(ours, b"no frame", (read,))
    _refused_by(receiver, "no frame of this channel")
    _seqpacket.send(ours, b"." + b"x" * (CHUNK + 1))
    _refused_by(receiver, f"longer than {CHUNK + 1} bytes")  # not cut short and taken
    _seqpacket.send(ours, b".three", (read, write, extra))
    _refused_by(receiver, "more than 2 descriptors")
    _seqpacket.send(ours, b"+first", (read, write))
    _seqpacket.send(ours, b".second", (extra,))
    _refused_by(receiver, "more than 2 descriptors")
    for fd in (read, write, extra):
        os.close(fd)
    assert _open_fds() == before  # every copy that came along was closed
    _seqpacket.send(ours, b"+cut short")
    ours.shutdown(socket.SHUT_WR)
    _refused_by(receiver, "cut short by the end of the stream")


def test_a_message_over_the_bound_is_refused_on_both_sides(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    small = Channel(ours, most=2 * CHUNK)
    with pytest.raises(FrameError, match="at most 122880 are sent"):
        small.send(b"x" * (2 * CHUNK + 1))
    with pytest.raises(FrameError, match="at most 0"):
        small.send(b"x", (0,))
    for frame in _seqpacket.frames(b"x" * (3 * CHUNK)):  # sent past the bound anyway
        _seqpacket.send(ours, frame)
    _refused_by(Channel(theirs, most=2 * CHUNK), "a message longer than 122880 bytes")


def test_a_single_datagram_longer_than_taken_is_refused(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The agent's framing: one message, one datagram; the kernel would cut it short."""
    ours, theirs = pair
    _seqpacket.send(ours, b"x" * 101)
    with pytest.raises(FrameError, match="longer than 100 bytes"):
        _seqpacket.receive(theirs, most=100)
    _seqpacket.send(ours, b"x" * 100)
    assert _seqpacket.receive(theirs, most=100) == (b"x" * 100, [])


@pytest.mark.anyio
async def test_a_full_socket_holds_the_sender_until_the_reader_drains_it(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    ours.setblocking(False)
    theirs.setblocking(False)
    sender, receiver = control.channel(ours), control.channel(theirs)
    payload = os.urandom(4 << 20)  # far more than the socket's buffer
    async with anyio.create_task_group() as tg:
        tg.start_soon(sender.send_async, payload)
        received = await receiver.receive_async()
    assert received == (payload, [])
