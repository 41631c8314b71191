"""Which addresses the proxy refuses to connect a sandbox to, whatever name led there
(pure): anything but a global unicast address (loopback, link-local with the clouds'
metadata services, private and shared ranges, multicast, reserved), unless the operator
mapped the name to it; and the server's own ports on this host, mapped or not."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection


def refusal(
    address: str, port: int, *, mapped: bool, server_ports: Collection[int], local: Collection[str]
) -> str | None:
    """Why ``address``:``port`` is refused (a sentence for the log), or None."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    ours = ip.is_loopback or ip.is_unspecified or str(ip) in local
    if ours and port in server_ports:
        return f"{ip} port {port} is the server's own"
    if mapped:
        return None
    if ip.is_loopback or ip.is_unspecified:
        return f"{ip} is this host (loopback)"
    if ip.is_link_local:
        return f"{ip} is link-local (where cloud metadata services answer)"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if not ip.is_global:
        return f"{ip} is a private or reserved address"
    if str(ip) in local:
        return f"{ip} is this host's"
    return None
