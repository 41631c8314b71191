"""What a sandbox sends past its proxy (pure): the target of a packet, and the ICMP answer
that refuses it, checked field by field (checksums included)."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from agentfense.server.network.direct import _checksum, packet_target, prohibited


def ipv4(protocol: int, payload: bytes, src: str = "10.255.255.1", dst: str = "1.2.3.4") -> bytes:
    header = bytearray(
        struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(payload), 7, 0, 64, protocol, 0)
        + socket.inet_aton(src)
        + socket.inet_aton(dst)
    )
    struct.pack_into(">H", header, 10, _checksum(bytes(header)))
    return bytes(header) + payload


def ipv6(next_header: int, payload: bytes, dst: str = "2001:db8::1") -> bytes:
    return (
        struct.pack(">IHBB", 0x60000000, len(payload), next_header, 64)
        + socket.inet_pton(socket.AF_INET6, "fd00:a9e:f3e5::1")
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


SYN = struct.pack(">HHIIBBHHH", 40000, 443, 1, 0, 0x50, 0x02, 65535, 0, 0)
DATAGRAM = struct.pack(">HHHH", 40001, 53, 9, 0) + b"x"


def test_the_target_of_tcp_and_udp_over_both_versions() -> None:
    assert packet_target(ipv4(6, SYN)) == ("tcp", "1.2.3.4", 443)
    assert packet_target(ipv4(17, DATAGRAM)) == ("udp", "1.2.3.4", 53)
    assert packet_target(ipv6(6, SYN)) == ("tcp", "2001:db8::1", 443)
    assert packet_target(ipv4(1, b"\x08\x00" + b"\x00" * 6)) == ("icmp", "1.2.3.4", 0)


def test_icmp_errors_and_neighbour_discovery_are_never_answered() -> None:
    assert packet_target(ipv4(1, b"\x03\x03" + b"\x00" * 6)) is None  # (an error: a loop)
    assert packet_target(ipv6(58, b"\x85\x00" + b"\x00" * 6, dst="ff02::2")) is None
    assert prohibited(ipv6(58, b"\x87\x00" + b"\x00" * 6)) is None
    assert packet_target(b"\x45") is None


def test_the_v4_answer_is_prohibited_from_the_destination_quoting_the_packet() -> None:
    packet = ipv4(6, SYN)
    answer = prohibited(packet)
    assert answer is not None
    assert _checksum(answer[:20]) == 0  # (a valid header checksum sums to zero)
    assert answer[9] == 1  # ICMP
    assert (answer[12:16], answer[16:20]) == (packet[16:20], packet[12:16])
    icmp = answer[20:]
    assert (icmp[0], icmp[1]) == (3, 13)  # destination unreachable, administratively prohibited
    assert _checksum(icmp) == 0
    assert icmp[8:] == packet[:28]  # its header and 8 bytes of what it carried


def test_the_v6_answer_is_prohibited_with_the_pseudo_header_checksum() -> None:
    packet = ipv6(17, DATAGRAM)
    answer = prohibited(packet)
    assert answer is not None
    assert (answer[6], answer[8:24], answer[24:40]) == (58, packet[24:40], packet[8:24])
    icmp = answer[40:]
    assert (icmp[0], icmp[1]) == (1, 1)
    pseudo = answer[8:24] + answer[24:40] + struct.pack(">I3xB", len(icmp), 58)
    assert _checksum(pseudo + icmp) == 0
    assert icmp[8:] == packet


@given(st.binary(max_size=200))
def test_any_bytes_read_from_the_interface_are_answered_or_ignored_never_raise(
    data: bytes,
) -> None:
    target = packet_target(data)
    answer = prohibited(data)
    assert (answer is None) == (target is None)


def test_fragments_after_the_first_have_no_port_and_are_not_answered() -> None:
    """A 64 KB datagram's later fragments were logged with a port read from its data."""
    packet = bytearray(ipv4(17, b"CDCDCDCD" * 4))
    packet[6:8] = (185).to_bytes(2, "big")  # (offset 185 x 8 bytes)
    assert packet_target(bytes(packet)) is None
    assert prohibited(bytes(packet)) is None


def test_ipv6_extension_headers_are_walked_to_the_port() -> None:
    hop_by_hop = bytes([17, 0]) + b"\x00" * 6  # (next: UDP, 8 bytes)
    assert packet_target(ipv6(0, hop_by_hop + DATAGRAM)) == ("udp", "2001:db8::1", 53)
    first = bytes([17, 0, 0, 1]) + b"\x00\x00\x00\x07"  # (fragment offset 0, more follow)
    assert packet_target(ipv6(44, first + DATAGRAM)) == ("udp", "2001:db8::1", 53)
    later = bytes([17, 0, 0, 0x50]) + b"\x00\x00\x00\x07"  # (offset 10 x 8 bytes)
    assert packet_target(ipv6(44, later + b"CDCDCDCD")) is None
