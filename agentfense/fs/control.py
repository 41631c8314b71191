"""The control channel between the server and the fs process: typed messages, any size.

A message is one JSON object (``op`` names its type; ``seq`` pairs a reply with its request,
for requests are answered as they complete, not in order) sent as one or more datagrams on
a SOCK_SEQPACKET socket: each starts with ``+`` (more follows) or ``.`` (the last), so a
reply of any size is delivered. The descriptor of a view's FUSE connection travels with its
:class:`AddView` (SCM_RIGHTS, on the first datagram).

Requests: :class:`AddView`, :class:`RemoveView`, :class:`Commit`, :class:`Changed` (the
server changed paths of a codebase: views drop what their kernel cached of them),
:class:`Ping`. Replies: :class:`Done`, :class:`Committed`, :class:`Failed`.
"""

from __future__ import annotations

import array
import json
import socket
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

CHUNK = 60 * 1024
MAX_MESSAGE = 64 << 20  # a peer that sends more is broken: refuse rather than grow


@dataclass(frozen=True, slots=True)
class Limits:
    """What a view may write between two commits (0: no limit) and its codebase's caps."""

    delta_bytes: int = 0
    delta_entries: int = 0
    codebase_bytes: int = 0
    codebase_entries: int = 0
    node_bytes: int = 0  # the view's node table (0: nodes.BUDGET)


@dataclass(frozen=True, slots=True)
class Message:
    op: ClassVar[str] = ""
    seq: int = field(default=0, kw_only=True)


@dataclass(frozen=True, slots=True)
class AddView(Message):
    """Serve the view on the connection whose fd comes along; ``recover``: it was served
    by a process that died (the kernel knows its nodes, the delta holds its journal)."""

    op: ClassVar[str] = "add_view"
    id: str
    lower: str
    delta: str
    rules: list[dict[str, Any]]
    uid: int
    gid: int
    limits: Limits = Limits()
    recover: bool = False


@dataclass(frozen=True, slots=True)
class RemoveView(Message):
    op: ClassVar[str] = "remove_view"
    id: str


@dataclass(frozen=True, slots=True)
class Commit(Message):
    op: ClassVar[str] = "commit"
    id: str


@dataclass(frozen=True, slots=True)
class Changed(Message):
    op: ClassVar[str] = "changed"
    lower: str
    paths: list[str]


@dataclass(frozen=True, slots=True)
class Ping(Message):
    op: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Done(Message):
    op: ClassVar[str] = "done"


@dataclass(frozen=True, slots=True)
class Committed(Message):
    op: ClassVar[str] = "committed"
    changed: int
    kept: int
    over_limit: bool


@dataclass(frozen=True, slots=True)
class Failed(Message):
    op: ClassVar[str] = "failed"
    message: str


_TYPES: dict[str, type[Message]] = {
    kind.op: kind for kind in (AddView, RemoveView, Commit, Changed, Ping, Done, Committed, Failed)
}


def encode(message: Message) -> bytes:
    data = asdict(message)
    data["op"] = message.op
    return json.dumps(data, separators=(",", ":")).encode()


def decode(data: bytes) -> Message:
    """The message in ``data``; ``ValueError`` when it is none."""
    raw = json.loads(data)
    kind = _TYPES.get(str(raw.pop("op", ""))) if isinstance(raw, dict) else None
    if kind is None:
        raise ValueError("not a message of this channel")
    names = {f.name for f in fields(kind)}
    if set(raw) - names:
        raise ValueError(f"unknown fields {sorted(set(raw) - names)} in {kind.op}")
    if kind is AddView and isinstance(raw.get("limits"), dict):
        raw["limits"] = Limits(**raw["limits"])
    try:
        return kind(**raw)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def datagrams(payload: bytes) -> list[bytes]:
    chunks = [payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)] or [b""]
    return [(b"." if i == len(chunks) - 1 else b"+") + c for i, c in enumerate(chunks)]


class Assembler:
    """Joins datagrams into messages (and keeps the fds that came with them)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.fds: list[int] = []

    def add(self, datagram: bytes) -> bytes | None:
        """The whole payload when ``datagram`` was its last part, else None."""
        if not datagram or datagram[:1] not in (b"+", b"."):
            raise ValueError("not a datagram of this channel")
        self._size += len(datagram)
        if self._size > MAX_MESSAGE:
            raise ValueError("message too large")
        self._parts.append(datagram[1:])
        if datagram[:1] == b"+":
            return None
        payload = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return payload


def send(sock: socket.socket, message: Message, fds: tuple[int, ...] = ()) -> None:
    """Send ``message`` (blocking); the caller keeps other senders out meanwhile."""
    for index, datagram in enumerate(datagrams(encode(message))):
        ancillary = []
        if index == 0 and fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sock.sendmsg([datagram], ancillary)


def received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def receive(sock: socket.socket, assembler: Assembler) -> tuple[Message, list[int]] | None:
    """The next message and the fds that came with it (blocking); None at end of stream."""
    while True:
        datagram, ancillary, _, _ = sock.recvmsg(CHUNK + 1, socket.CMSG_SPACE(16 * 4))
        if not datagram:
            return None
        assembler.fds += received_fds(ancillary)
        payload = assembler.add(datagram)
        if payload is not None:
            fds, assembler.fds = assembler.fds, []
            return decode(payload), fds
