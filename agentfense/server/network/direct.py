"""What a sandbox sends past its proxy: a TUN interface inside its network namespace, the
default route (IPv4 and IPv6), read by the server. A packet there is a connection tried
directly (a program that ignores ``HTTP_PROXY``, an address dialled, UDP to a resolver of
its own): it is logged, dropped, and answered at once with ICMP "administratively
prohibited", so the connect fails now (EHOSTUNREACH) instead of after its timeout.

Made (``make_catchall``) by the thread that makes the proxy's sockets, inside the namespace;
the sandbox's processes cannot change it (that needs CAP_NET_ADMIN where the namespace's
owner, the host's user namespace, grants it). ``packet_target`` and ``prohibited`` are pure.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct

INTERFACE = b"agentfense0"
_ADDRESS_V4 = "10.255.255.1"  # the sandbox's own end (a source for what it sends there)
_ADDRESS_V6 = "fd00:a9e:f3e5::1"
_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _SIOCSIFADDR, _SIOCGIFINDEX = 0x8913, 0x8914, 0x8916, 0x8933
_SIOCADDRT = 0x890B
_IFF_UP, _IFF_RUNNING = 0x1, 0x40
_RTF_UP = 0x1


class _Sockaddr(ctypes.Structure):
    _fields_ = (("family", ctypes.c_ushort), ("data", ctypes.c_char * 14))


class _RtEntry(ctypes.Structure):
    _fields_ = (
        ("pad1", ctypes.c_ulong),
        ("dst", _Sockaddr),
        ("gateway", _Sockaddr),
        ("genmask", _Sockaddr),
        ("flags", ctypes.c_ushort),
        ("pad2", ctypes.c_short),
        ("pad3", ctypes.c_ulong),
        ("pad4", ctypes.c_void_p),
        ("metric", ctypes.c_short),
        ("dev", ctypes.c_char_p),
        ("mtu", ctypes.c_ulong),
        ("window", ctypes.c_ulong),
        ("irtt", ctypes.c_ushort),
    )


class _In6Rtmsg(ctypes.Structure):
    _fields_ = (
        ("dst", ctypes.c_ubyte * 16),
        ("src", ctypes.c_ubyte * 16),
        ("gateway", ctypes.c_ubyte * 16),
        ("type", ctypes.c_uint32),
        ("dst_len", ctypes.c_uint16),
        ("src_len", ctypes.c_uint16),
        ("metric", ctypes.c_uint32),
        ("info", ctypes.c_ulong),
        ("flags", ctypes.c_uint32),
        ("ifindex", ctypes.c_int),
    )


def make_catchall() -> int:
    """The TUN interface, up, with the default routes; its fd (non-blocking). Called in the
    sandbox's namespace."""
    tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(tun, _TUNSETIFF, struct.pack("16sH22x", INTERFACE, _IFF_TUN | _IFF_NO_PI))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
            address = struct.pack(
                "16sHH4s16x", INTERFACE, socket.AF_INET, 0, socket.inet_aton(_ADDRESS_V4)
            )
            fcntl.ioctl(control, _SIOCSIFADDR, address)
            flags = struct.unpack_from("16sH", fcntl.ioctl(control, _SIOCGIFFLAGS, address))[1]
            up = struct.pack("16sH22x", INTERFACE, flags | _IFF_UP | _IFF_RUNNING)
            fcntl.ioctl(control, _SIOCSIFFLAGS, up)
            route = _RtEntry()
            route.dst.family = route.genmask.family = socket.AF_INET
            route.flags = _RTF_UP
            route.dev = INTERFACE
            fcntl.ioctl(control, _SIOCADDRT, bytes(route))
            index = struct.unpack_from(
                "16si", fcntl.ioctl(control, _SIOCGIFINDEX, struct.pack("16s24x", INTERFACE))
            )[1]
        with contextlib.suppress(OSError):  # (a host without IPv6: IPv4 alone)
            _route_v6(index)
    except BaseException:
        os.close(tun)
        raise
    return tun


def _route_v6(index: int) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as control:
        address = socket.inet_pton(socket.AF_INET6, _ADDRESS_V6)
        fcntl.ioctl(control, _SIOCSIFADDR, struct.pack("16sIi", address, 128, index))
        route = _In6Rtmsg()
        route.flags = _RTF_UP
        route.metric = 1
        route.ifindex = index
        fcntl.ioctl(control, _SIOCADDRT, bytes(route))


def packet_target(packet: bytes) -> tuple[str, str, int] | None:
    """(protocol, destination address, port: 0 for none) of an IP packet; None for what is
    none, or a packet that answers nothing (ICMP errors: never answered)."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        if int.from_bytes(packet[6:8], "big") & 0x1FFF:
            return None  # (a fragment after the first: no port in it, and never answered)
        header = (packet[0] & 0xF) * 4
        protocol, destination = packet[9], socket.inet_ntop(socket.AF_INET, packet[16:20])
    elif version == 6 and len(packet) >= 40:
        destination = socket.inet_ntop(socket.AF_INET6, packet[24:40])
        found = _past_extensions(packet)
        if found is None:
            return None
        protocol, header = found
    else:
        return None
    name = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(protocol, f"ip-{protocol}")
    if name == "icmp" and len(packet) > header and packet[header] not in (8, 128):
        return None  # (only echo requests are asked: errors are never answered)
    port = 0
    if name in ("tcp", "udp") and len(packet) >= header + 4:
        port = int.from_bytes(packet[header + 2 : header + 4], "big")
    return name, destination, port


def _past_extensions(packet: bytes) -> tuple[int, int] | None:
    """The upper protocol of an IPv6 packet and where its header begins, past extension
    headers (a few); None for a fragment after the first, or what cannot be walked."""
    protocol, at = packet[6], 40
    for _ in range(8):
        if protocol == 44:  # fragment
            if len(packet) < at + 8:
                return None
            if int.from_bytes(packet[at + 2 : at + 4], "big") >> 3:
                return None
            protocol, at = packet[at], at + 8
        elif protocol in (0, 43, 60):  # hop-by-hop, routing, destination options
            if len(packet) < at + 2:
                return None
            protocol, at = packet[at], at + (packet[at + 1] + 1) * 8
        else:
            return protocol, at
    return None


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def prohibited(packet: bytes) -> bytes | None:
    """The ICMP "communication administratively prohibited" answering ``packet`` (from its
    destination, quoting its start as ICMP does), None when it is not to be answered."""
    if packet_target(packet) is None:
        return None
    if packet[0] >> 4 == 4:
        header = (packet[0] & 0xF) * 4
        quoted = packet[: header + 8]
        icmp = bytearray(struct.pack(">BBHI", 3, 13, 0, 0) + quoted)
        struct.pack_into(">H", icmp, 2, _checksum(bytes(icmp)))
        addresses = packet[16:20] + packet[12:16]  # (from its destination, to its source)
        head = struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0)
        ip = bytearray(head + addresses)
        struct.pack_into(">H", ip, 10, _checksum(bytes(ip)))
        return bytes(ip + icmp)
    quoted = packet[: 1232 - 48]  # (an ICMPv6 error fits the minimum MTU, 1280)
    source, destination = packet[24:40], packet[8:24]
    icmp = bytearray(struct.pack(">BBHI", 1, 1, 0, 0) + quoted)
    pseudo = source + destination + struct.pack(">I3xB", len(icmp), 58)
    struct.pack_into(">H", icmp, 2, _checksum(pseudo + bytes(icmp)))
    head = struct.pack(">IHBB", 0x60000000, len(icmp), 58, 64) + source + destination
    return head + bytes(icmp)
