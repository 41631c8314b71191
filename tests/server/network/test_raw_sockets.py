"""The raw-socket watch's pure parts: which socket() calls it refuses and reports, and the
kernel's struct layouts (the integration tests run it against real filters, on bwrap and
Docker)."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from agentfense.server.network.connections import target
from agentfense.server.network.raw_sockets import (
    SECCOMP_IOCTL_NOTIF_RECV,
    SECCOMP_IOCTL_NOTIF_SEND,
    attempt,
    response,
)

NONBLOCK_CLOEXEC = 0o4000 | 0o2000000


@pytest.mark.parametrize(
    ("args", "kind", "said"),
    [
        ((socket.AF_INET, socket.SOCK_RAW, 1), "raw-socket", "raw IPv4 socket of protocol 1"),
        ((socket.AF_INET6, socket.SOCK_RAW | NONBLOCK_CLOEXEC, 58), "raw-socket", "IPv6"),
        ((socket.AF_INET, 10, 0x300), "packet-socket", "a packet socket"),  # (SOCK_PACKET)
        ((socket.AF_PACKET, socket.SOCK_RAW, 0x300), "packet-socket", "a packet socket"),
        ((socket.AF_PACKET, socket.SOCK_DGRAM, 0), "packet-socket", "a packet socket"),
        # (the high halves of the registers are not the call's: ignored, as the filter does)
        ((socket.AF_INET | 1 << 32, socket.SOCK_RAW | 7 << 40, 1), "raw-socket", "IPv4"),
    ],
)
def test_raw_and_packet_sockets_are_refused_and_said(
    args: tuple[int, ...], kind: str, said: str
) -> None:
    tried = attempt((*args, 0, 0, 0))
    assert tried is not None
    assert tried[0] == kind
    assert said in tried[1]
    assert target(kind, "", 0) == kind


@pytest.mark.parametrize(
    "args",
    [
        (socket.AF_INET, socket.SOCK_STREAM, 0),
        (socket.AF_INET6, socket.SOCK_DGRAM, 0),
        (socket.AF_UNIX, socket.SOCK_RAW, 0),  # (no such thing, but no network either)
        (socket.AF_NETLINK, socket.SOCK_RAW, 0),  # what `ip` and `ss` open: theirs to have
    ],
)
def test_other_sockets_go_on(args: tuple[int, ...]) -> None:
    assert attempt((*args, 0, 0, 0)) is None


def test_the_answer_refuses_or_lets_the_call_go_on() -> None:
    assert struct.unpack("=QqiI", response(7, errno.EPERM)) == (7, 0, -errno.EPERM, 0)
    assert struct.unpack("=QqiI", response(8, 0)) == (8, 0, 0, 1)  # FLAG_CONTINUE


def test_the_ioctls_are_the_kernel_s() -> None:
    # <linux/seccomp.h>: SECCOMP_IOWR(0, struct seccomp_notif), SECCOMP_IOWR(1, ..._resp)
    assert SECCOMP_IOCTL_NOTIF_RECV == 0xC0502100
    assert SECCOMP_IOCTL_NOTIF_SEND == 0xC0182101
