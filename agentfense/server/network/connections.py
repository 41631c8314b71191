"""Every connection a sandbox made through its proxy, and every lookup it tried: the last
``size`` of them, oldest first, numbered from 1 (``seq``) for the life of the sandbox (its
stops and starts included). An entry is written as the connection is decided, and its byte
counts and duration are brought up to date as it runs and when it ends."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from enum import StrEnum

from .raw_sockets import RAW_KINDS


class Verdict(StrEnum):
    ALLOWED = "allowed"  # reached the host
    DENIED = "denied"  # the policy refused it
    FAILED = "failed"  # allowed, but the host could not be reached


@dataclass(frozen=True, slots=True)
class Connection:
    seq: int
    started: float  # seconds since the epoch
    # "http", "connect" (HTTPS and other tunnels), "dns", "direct-tcp", "direct-udp"...
    # (sent past the proxy: direct.py), "raw-socket", "packet-socket" (raw_sockets.py)
    kind: str
    host: str
    port: int
    address: str  # what the host was resolved to ("" when it was not)
    verdict: Verdict
    reason: str  # why it was denied or failed ("" when allowed)
    bytes_up: int = 0  # from the sandbox
    bytes_down: int = 0  # to the sandbox
    duration: float = 0.0  # seconds, so far

    @property
    def target(self) -> str:
        return target(self.kind, self.host, self.port)


def target(kind: str, host: str, port: int) -> str:
    """What a connection tried, as results and the audit log say it: ``host:port``
    (``[v6]:port``); a lookup's name alone; a raw or packet socket's kind."""
    if kind in RAW_KINDS:
        return kind
    if not host:
        return "(no host)"  # (refused before one was named: a limit, a bad request)
    if kind == "dns" or not port:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ConnectionLog:
    def __init__(self, size: int) -> None:
        self._entries: deque[Connection] = deque(maxlen=size)
        self._live: dict[int, Connection] = {}  # seq -> entry of a connection still open
        self._last = 0
        self.dropped = 0  # entries pushed out of the ring

    @property
    def last_seq(self) -> int:
        return self._last

    def add(
        self,
        kind: str,
        host: str,
        port: int,
        verdict: Verdict,
        reason: str = "",
        address: str = "",
    ) -> int:
        self._last += 1
        entry = Connection(self._last, time.time(), kind, host, port, address, verdict, reason)
        if len(self._entries) == self._entries.maxlen:
            self.dropped += 1
            self._live.pop(self._entries[0].seq, None)
        self._entries.append(entry)
        if verdict is Verdict.ALLOWED:
            self._live[entry.seq] = entry
        return entry.seq

    def update(self, seq: int, *, up: int, down: int, ended: bool = False) -> None:
        """Byte counts (totals) of an allowed connection, as it runs and at its end."""
        entry = self._live.get(seq)
        if entry is None:
            return
        newer = replace(entry, bytes_up=up, bytes_down=down, duration=time.time() - entry.started)
        first = self._entries[0].seq
        self._entries[seq - first] = newer
        if ended:
            del self._live[seq]
        else:
            self._live[seq] = newer

    def after(self, seq: int) -> list[Connection]:
        """The entries numbered above ``seq`` still kept."""
        if not self._entries:
            return []
        first = self._entries[0].seq
        return list(self._entries)[max(seq + 1 - first, 0) :]

    def denied_after(self, seq: int, most: int = 16) -> list[str]:
        """The targets denied since ``seq`` (each once, at most ``most``): what a command's
        result says was refused while it ran."""
        targets: dict[str, None] = {}
        for entry in self.after(seq):
            if entry.verdict is Verdict.DENIED:
                targets[entry.target] = None
                if len(targets) >= most:
                    break
        return list(targets)
