"""Which addresses the proxy refuses to connect a sandbox to, whatever name led there
(pure): anything but a global unicast address (loopback, link-local with the clouds'
metadata services, private and shared ranges, multicast, reserved), unless the operator
mapped the name to it; and the server's own ports on this host, mapped or not."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

# IPv6 is global unicast in 2000::/3 alone (what is_global lets by of the rest carries an
# IPv4 address the proxy would not see: NAT64 64:ff9b::/96, IPv4-compatible ::/96...), and
# there 6to4 and Teredo carry one too.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_CARRY_V4 = (ipaddress.IPv6Network("2002::/16"), ipaddress.IPv6Network("2001::/32"))


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
    if isinstance(ip, ipaddress.IPv6Address):
        if ip not in _GLOBAL_UNICAST_V6:
            return f"{ip} is not a global unicast IPv6 address"
        if any(ip in carrying for carrying in _CARRY_V4):
            return f"{ip} carries an IPv4 address (6to4, Teredo)"
    if str(ip) in local:
        return f"{ip} is this host's"
    return None
