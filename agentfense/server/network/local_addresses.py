"""This host's own addresses, as the kernel has them now (read again at most once a
second): every IPv4 address of its local routing table (``/proc/net/fib_trie``: the
secondary ones too, which ``SIOCGIFADDR`` misses) and every IPv6 one (``if_inet6``)."""

from __future__ import annotations

import contextlib
import ipaddress
import time
from pathlib import Path

_FRESH_FOR = 1.0  # seconds
_read: tuple[float, frozenset[str]] = (-_FRESH_FOR, frozenset())


def local_addresses() -> frozenset[str]:
    global _read
    at, found = _read
    now = time.monotonic()
    if now - at < _FRESH_FOR:
        return found
    found = frozenset(_v4() | _v6())
    _read = (now, found)
    return found


def _v4() -> set[str]:
    """The ``/32 host LOCAL`` leaves of the trie, each under its ``|-- address`` line."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        last = ""
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("|--", "+--")):
                last = stripped[3:].strip().split(" ")[0]
            elif stripped.startswith("/32 host LOCAL") and last:
                found.add(last)
    return found


def _v6() -> set[str]:
    found: set[str] = set()
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            found.add(str(ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))))
    return found
