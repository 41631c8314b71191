"""The messages between the server and a sandbox's agent, typed (the server's side).

The agent (``_agent.py``) is stdlib-only and runs from source inside the sandbox, so it
cannot import this module: the wire format here is the agent's, kept exactly. A message is
one JSON object in one datagram (:func:`agentfense._seqpacket.send`).

Requests, server to agent: :class:`Spawn` (``{"op": "spawn", "id", "argv", "env", "cwd"}``,
with the command's stdin, stdout and stderr, and its cgroup's ``cgroup.procs`` and
directory, as SCM_RIGHTS) and :class:`Kill` (``{"op": "kill", "id", "signal"}``).
Replies, agent to server: :class:`Ready` (``{"ready": pid}``), :class:`Started`
(``{"id", "pid"}``), :class:`Refused` (``{"id", "error", "errno"}``, and ``"field":
"workdir"`` when the working directory is what failed), :class:`Exited` (``{"id", "exit"}``).

Each has a pure ``encode`` and ``decode``; ``decode`` takes only what ``encode`` makes and
refuses anything else (a field missing, unknown or of the wrong type, an unknown op or
shape, an oversize message) with a :class:`~agentfense._json_messages.MessageError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Self

from .._json_messages import Fields, MessageError, dump, parse

MAX_REQUEST = 1 << 20  # what the agent reads of a datagram (``_agent._recv``)
MAX_REPLY = 64 << 10  # far more than any reply the agent makes
MAX_SIGNAL = 64
MAX_PID = 1 << 22  # the kernel's PID_MAX_LIMIT
MAX_EXIT = 255  # an exit status, or 128 + the signal that ended the command


@dataclass(frozen=True, slots=True)
class Spawn:
    op: ClassVar[str] = "spawn"
    id: int
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str

    def encode(self) -> bytes:
        return dump(
            {
                "op": self.op,
                "id": self.id,
                "argv": list(self.argv),
                "env": dict(self.env),
                "cwd": self.cwd,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        fields = _request(data, cls.op)
        spawn = cls(
            fields.integer("id"),
            fields.strings("argv"),
            fields.string_map("env"),
            fields.string("cwd"),
        )
        if not spawn.argv:
            raise fields.error("argv must name a program")
        fields.done()
        return spawn


@dataclass(frozen=True, slots=True)
class Kill:
    op: ClassVar[str] = "kill"
    id: int
    signal: int

    def encode(self) -> bytes:
        return dump({"op": self.op, "id": self.id, "signal": self.signal})

    @classmethod
    def decode(cls, data: bytes) -> Self:
        fields = _request(data, cls.op)
        kill = cls(fields.integer("id"), fields.integer("signal", least=1, most=MAX_SIGNAL))
        fields.done()
        return kill


def _request(data: bytes, op: str) -> Fields:
    raw = parse(data, most=MAX_REQUEST)
    kind = raw.pop("op", None)
    if kind != op:
        raise MessageError(f"a request whose op {kind!r} is not {op!r}")
    return Fields(raw, op)


class _Reply:
    __slots__ = ()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """The reply of this type in ``data``; MessageError when it is none."""
        reply = decode_reply(data)
        if not isinstance(reply, cls):
            raise MessageError(f"a {type(reply).__name__} reply where a {cls.__name__} was due")
        return reply


@dataclass(frozen=True, slots=True)
class Ready(_Reply):
    """The agent runs, as ``pid`` of the sandbox (1: it is the sandbox's init)."""

    pid: int

    def encode(self) -> bytes:
        return dump({"ready": self.pid})

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(fields.integer("ready", least=1, most=MAX_PID))


@dataclass(frozen=True, slots=True)
class Started(_Reply):
    """Command ``id`` runs as ``pid``."""

    id: int
    pid: int

    def encode(self) -> bytes:
        return dump({"id": self.id, "pid": self.pid})

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(fields.integer("id"), fields.integer("pid", least=1, most=MAX_PID))


@dataclass(frozen=True, slots=True)
class Refused(_Reply):
    """Command ``id`` could not start: ``error`` says why, ``errno`` is the system's error
    number (None when there was none), ``workdir`` whether its working directory failed."""

    id: int
    error: str
    errno: int | None
    workdir: bool = False

    def encode(self) -> bytes:
        reply: dict[str, object] = {"id": self.id, "error": self.error, "errno": self.errno}
        if self.workdir:
            reply["field"] = "workdir"
        return dump(reply)

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        ident, error = fields.integer("id"), fields.string("error")
        errno = fields.optional_integer("errno", most=4095)
        workdir = fields.has("field")
        if workdir and fields.string("field") != "workdir":
            raise fields.error("field can only be 'workdir'")
        return cls(ident, error, errno, workdir)


@dataclass(frozen=True, slots=True)
class Exited(_Reply):
    """Command ``id``'s own process ended with ``code`` (128 + N for signal N)."""

    id: int
    code: int

    def encode(self) -> bytes:
        return dump({"id": self.id, "exit": self.code})

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(fields.integer("id"), fields.integer("exit", most=MAX_EXIT))


Reply = Ready | Started | Refused | Exited

# A reply is told by the one key only it has.
_BY_KEY: dict[str, type[Reply]] = {
    "ready": Ready,
    "exit": Exited,
    "pid": Started,
    "error": Refused,
}


def decode_reply(data: bytes) -> Reply:
    """The agent's reply in ``data``; MessageError when it is none."""
    raw = parse(data, most=MAX_REPLY)
    kinds = [kind for key, kind in _BY_KEY.items() if key in raw]
    if len(kinds) != 1:
        keys = ", ".join(sorted(_BY_KEY))
        raise MessageError(f"a reply from the agent with not exactly one of {keys}")
    fields = Fields(raw, f"the agent's {kinds[0].__name__.lower()} reply")
    reply = kinds[0]._read(fields)
    fields.done()
    return reply
