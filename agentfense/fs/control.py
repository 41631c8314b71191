"""The control channel between the server and the fs process: its messages, typed.

Each message is a frozen dataclass with a pure :meth:`~Message.encode` (one JSON object:
``op`` names its type, ``seq`` pairs a reply with its request, for requests are answered as
they complete, not in order) and :meth:`~Message.decode`, which takes only what ``encode``
makes: a field missing, of the wrong type or unknown, an unknown op, or more than
:data:`MAX_MESSAGE` bytes is a :class:`~agentfense._json_messages.MessageError` with a
sentence (and the ``seq`` of the message, when that much could be read). The server decodes
only replies (:func:`decode_reply`), the fs process only requests (:func:`decode_request`).

Messages travel on a SOCK_SEQPACKET socket framed by :class:`agentfense._seqpacket.Channel`
(:func:`channel`): any size up to :data:`MAX_MESSAGE`; the descriptor of a view's FUSE
connection comes with its :class:`AddView`.

Requests: :class:`AddView`, :class:`RemoveView`, :class:`Commit`, :class:`Changed` (the
server changed paths of a codebase: views drop what their kernel cached of them),
:class:`Ping`. Replies: :class:`Done`, :class:`Committed` (to a commit), :class:`Failed`
(to any request that could not be done, with a sentence).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import ClassVar, Self, TypeVar

from .._json_messages import MAX_INT, Fields, MessageError, dump, parse
from .._seqpacket import Channel
from ..errors import InvalidConfigurationError
from ..types import PermissionRule

MAX_MESSAGE = 64 << 20  # a peer that sends more is broken: refuse rather than grow
MAX_UID = (1 << 32) - 2  # (-1, 4294967295, means "no change" to chown)


def channel(sock: socket.socket) -> Channel:
    """The framing of the control channel on ``sock`` (a message brings at most two fds)."""
    return Channel(sock, most=MAX_MESSAGE, max_fds=2)  # (AddView: a connection, a generation)


@dataclass(frozen=True, slots=True)
class Limits:
    """What a view may write between two commits (0: no limit) and its codebase's caps."""

    delta_bytes: int = 0
    delta_entries: int = 0
    codebase_bytes: int = 0
    codebase_entries: int = 0
    node_bytes: int = 0  # the view's node table (0: nodes.BUDGET)

    def to_json(self) -> dict[str, object]:
        return {
            "delta_bytes": self.delta_bytes,
            "delta_entries": self.delta_entries,
            "codebase_bytes": self.codebase_bytes,
            "codebase_entries": self.codebase_entries,
            "node_bytes": self.node_bytes,
        }

    @classmethod
    def from_json(cls, fields: Fields) -> Limits:
        limits = cls(
            delta_bytes=fields.integer("delta_bytes"),
            delta_entries=fields.integer("delta_entries"),
            codebase_bytes=fields.integer("codebase_bytes"),
            codebase_entries=fields.integer("codebase_entries"),
            node_bytes=fields.integer("node_bytes"),
        )
        fields.done()
        return limits


@dataclass(frozen=True, slots=True)
class Message:
    op: ClassVar[str] = ""
    seq: int = field(default=0, kw_only=True)

    def encode(self) -> bytes:
        return dump({"op": self.op, "seq": self.seq, **self._fields()})

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """The message of this type in ``data``; MessageError when it is none."""
        return _decode(data, (cls,))

    def _fields(self) -> dict[str, object]:
        return {}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(seq=seq)


@dataclass(frozen=True, slots=True)
class Done(Message):
    op: ClassVar[str] = "done"


# The FUSE requests the fs process counts, by the name of their opcode (``fs/_abi.py``);
# ``other``: any opcode not named here.
FS_OPS = (
    *sorted(
        {
            "lookup",
            "forget",
            "batch_forget",
            "getattr",
            "setattr",
            "readlink",
            "symlink",
            "mknod",
            "mkdir",
            "unlink",
            "rmdir",
            "rename",
            "link",
            "open",
            "read",
            "write",
            "statfs",
            "release",
            "fsync",
            "setxattr",
            "getxattr",
            "listxattr",
            "removexattr",
            "flush",
            "init",
            "opendir",
            "readdir",
            "releasedir",
            "fsyncdir",
            "create",
            "interrupt",
            "destroy",
            "fallocate",
            "readdirplus",
        }
    ),
    "other",
)
NO_OPS = (0,) * len(FS_OPS)


@dataclass(frozen=True, slots=True)
class Committed(Message):
    op: ClassVar[str] = "committed"
    changed: int
    kept: int
    over_limit: bool
    written: int  # bytes of the regular files the commit moved into the codebase
    # How the codebase changed: bytes of its regular files, and its number of entries.
    bytes_delta: int = 0
    entries_delta: int = 0
    # The FUSE requests the view answered since its last commit, aligned with FS_OPS.
    ops: tuple[int, ...] = NO_OPS
    # The view's generation as the commit began (``generation``): all it counted, committed.
    generation: int = 0
    # The delta still holds something (a deletion kept, an entry that could not move, a file
    # with several names): the next commit has work whatever the generation says.
    pending: bool = False
    # Of an Apply or a Discard: the changes applied (discarded), and those that conflicted.
    applied: tuple[str, ...] = ()
    conflicts: tuple[tuple[str, str], ...] = ()  # path, why

    def _fields(self) -> dict[str, object]:
        return {
            "applied": list(self.applied),
            "conflicts": [{"path": path, "why": why} for path, why in self.conflicts],
            "generation": self.generation,
            "pending": self.pending,
            "changed": self.changed,
            "kept": self.kept,
            "over_limit": self.over_limit,
            "written": self.written,
            "bytes_delta": self.bytes_delta,
            "entries_delta": self.entries_delta,
            "ops": {name: count for name, count in zip(FS_OPS, self.ops, strict=True) if count},
        }

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(
            fields.integer("changed"),
            fields.integer("kept"),
            fields.boolean("over_limit"),
            fields.integer("written"),
            fields.integer("bytes_delta", least=-MAX_INT),
            fields.integer("entries_delta", least=-MAX_INT),
            _ops(fields.nested("ops")),
            fields.integer("generation"),
            fields.boolean("pending"),
            fields.strings("applied"),
            tuple(_conflict(item) for item in fields.nested_list("conflicts")),
            seq=seq,
        )


def _conflict(fields: Fields) -> tuple[str, str]:
    conflict = fields.string("path"), fields.string("why")
    fields.done()
    return conflict


def _ops(fields: Fields) -> tuple[int, ...]:
    counts = tuple(fields.integer(name) if fields.has(name) else 0 for name in FS_OPS)
    fields.done()  # (an op not in FS_OPS is refused)
    return counts


@dataclass(frozen=True, slots=True)
class Failed(Message):
    op: ClassVar[str] = "failed"
    message: str
    # Why, when it is the sandbox's to know (ENOSPC: its limits); 0 for a failure of ours.
    errno: int = 0

    def _fields(self) -> dict[str, object]:
        return {"message": self.message, "errno": self.errno}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        code = fields.integer("errno", most=4095) if fields.has("errno") else 0
        return cls(fields.string("message"), code, seq=seq)


@dataclass(frozen=True, slots=True)
class ChangeEntry:
    """One path where a view differs from its codebase (``fs/review.py``)."""

    path: str
    kind: str  # added, modified, deleted, type_changed
    type: str  # file, directory, symlink, other
    size: int
    mode: int

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "kind": self.kind,
            "type": self.type,
            "size": self.size,
            "mode": self.mode,
        }

    @classmethod
    def from_json(cls, fields: Fields) -> ChangeEntry:
        kind, kinds = fields.string("kind"), ("added", "modified", "deleted", "type_changed")
        entry_type, types = fields.string("type"), ("file", "directory", "symlink", "other")
        if kind not in kinds or entry_type not in types:
            raise fields.error(f"kind {kind!r} or type {entry_type!r} is not known")
        entry = cls(
            fields.string("path"), kind, entry_type, fields.integer("size"), fields.integer("mode")
        )
        fields.done()
        return entry


@dataclass(frozen=True, slots=True)
class Changes(Message):
    """The changes of a view (at most ``review.MAX_LISTED``, by path) and how many there are."""

    op: ClassVar[str] = "changes"
    changes: tuple[ChangeEntry, ...]
    total: int

    def _fields(self) -> dict[str, object]:
        return {"changes": [change.to_json() for change in self.changes], "total": self.total}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        changes = tuple(ChangeEntry.from_json(item) for item in fields.nested_list("changes"))
        return cls(changes, fields.integer("total"), seq=seq)


@dataclass(frozen=True, slots=True)
class Captured(Message):
    """A view's layer copied: how many entries, and bytes of files; what the copy took of
    the disk (inodes made, bytes allocated: a linked file takes neither)."""

    op: ClassVar[str] = "captured"
    entries: int
    bytes: int
    made: int
    allocated: int

    def _fields(self) -> dict[str, object]:
        return {
            "entries": self.entries,
            "bytes": self.bytes,
            "made": self.made,
            "allocated": self.allocated,
        }

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(
            fields.integer("entries"),
            fields.integer("bytes"),
            fields.integer("made"),
            fields.integer("allocated"),
            seq=seq,
        )


@dataclass(frozen=True, slots=True)
class EventEntry:
    """One event of a view (``fs/_events.py``)."""

    seq: int
    time_ns: int
    kind: str  # created, modified, deleted, renamed, denied
    path: str
    to: str = ""
    operation: str = ""
    rule: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "time_ns": self.time_ns,
            "kind": self.kind,
            "path": self.path,
            "to": self.to,
            "operation": self.operation,
            "rule": self.rule,
        }

    @classmethod
    def from_json(cls, fields: Fields) -> EventEntry:
        kind = fields.string("kind")
        if kind not in ("created", "modified", "deleted", "renamed", "denied"):
            raise fields.error(f"kind {kind!r} is not known")
        entry = cls(
            fields.integer("seq"),
            fields.integer("time_ns"),
            kind,
            fields.string("path"),
            fields.string("to"),
            fields.string("operation"),
            fields.string("rule"),
        )
        fields.done()
        return entry


@dataclass(frozen=True, slots=True)
class Events(Message):
    """A view's events after those a watcher had, the seq to ask after next, and how many it
    missed."""

    op: ClassVar[str] = "events"
    events: tuple[EventEntry, ...]
    next: int
    lost: int = 0

    def _fields(self) -> dict[str, object]:
        return {
            "events": [event.to_json() for event in self.events],
            "next": self.next,
            "lost": self.lost,
        }

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        events = tuple(EventEntry.from_json(item) for item in fields.nested_list("events"))
        return cls(events, fields.integer("next"), fields.integer("lost"), seq=seq)


Reply = Done | Committed | Changes | Captured | Events | Failed


@dataclass(frozen=True, slots=True)
class AddView(Message):
    """Serve the view on the connection whose fd comes along; ``recover``: it was served
    by a process that died (the kernel knows its nodes, the delta holds its journal)."""

    op: ClassVar[str] = "add_view"
    id: str
    lower: str
    delta: str
    rules: tuple[PermissionRule, ...]
    uid: int
    gid: int
    limits: Limits = Limits()
    recover: bool = False
    review: bool = False  # commit="manual": note bases, check commits for conflicts
    seeded: bool = False  # its delta holds a copy of another view's layer (a fork)

    def _fields(self) -> dict[str, object]:
        return {
            "review": self.review,
            "seeded": self.seeded,
            "id": self.id,
            "lower": self.lower,
            "delta": self.delta,
            "rules": [rule.to_dict() for rule in self.rules],
            "uid": self.uid,
            "gid": self.gid,
            "limits": self.limits.to_json(),
            "recover": self.recover,
        }

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(
            fields.path("id"),
            fields.path("lower"),
            fields.path("delta"),
            tuple(_rule(rule) for rule in fields.nested_list("rules")),
            fields.integer("uid", most=MAX_UID),
            fields.integer("gid", most=MAX_UID),
            Limits.from_json(fields.nested("limits")),
            fields.boolean("recover"),
            fields.boolean("review"),
            fields.boolean("seeded"),
            seq=seq,
        )


def _rule(fields: Fields) -> PermissionRule:
    value = {
        "pattern": fields.string("pattern"),
        "permission": fields.string("permission"),
        "type": fields.string("type"),
        "priority": fields.integer("priority", least=-MAX_INT),
    }
    fields.done()
    try:
        return PermissionRule.from_value(value)
    except InvalidConfigurationError as exc:  # (a permission or type it does not know)
        raise fields.error(str(exc)) from None


@dataclass(frozen=True, slots=True)
class RemoveView(Message):
    op: ClassVar[str] = "remove_view"
    id: str

    def _fields(self) -> dict[str, object]:
        return {"id": self.id}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(fields.path("id"), seq=seq)


@dataclass(frozen=True, slots=True)
class Commit(Message):
    op: ClassVar[str] = "commit"
    id: str

    def _fields(self) -> dict[str, object]:
        return {"id": self.id}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(fields.path("id"), seq=seq)


def _selection(paths: tuple[str, ...] | None) -> dict[str, object]:
    return {"all": paths is None, "paths": list(paths or ())}


def _read_selection(fields: Fields) -> tuple[str, ...] | None:
    everything, paths = fields.boolean("all"), fields.strings("paths")
    return None if everything else paths


@dataclass(frozen=True, slots=True)
class ListChanges(Message):
    """What the view changes of its codebase, at ``paths`` (None: everywhere)."""

    op: ClassVar[str] = "list_changes"
    id: str
    paths: tuple[str, ...] | None = None

    def _fields(self) -> dict[str, object]:
        return {"id": self.id, **_selection(self.paths)}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(fields.path("id"), _read_selection(fields), seq=seq)


@dataclass(frozen=True, slots=True)
class Apply(Message):
    """Commit the view's changes at ``paths`` (None: all; ``()``: none, which reports what
    its requests did since, as a commit does), checked for conflicts unless ``overwrite``."""

    op: ClassVar[str] = "apply"
    id: str
    paths: tuple[str, ...] | None = None
    overwrite: bool = False

    def _fields(self) -> dict[str, object]:
        return {"id": self.id, "overwrite": self.overwrite, **_selection(self.paths)}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        ident, overwrite = fields.path("id"), fields.boolean("overwrite")
        return cls(ident, _read_selection(fields), overwrite, seq=seq)


@dataclass(frozen=True, slots=True)
class Discard(Message):
    """Make the view equal to its codebase at ``paths`` (None: everywhere)."""

    op: ClassVar[str] = "discard"
    id: str
    paths: tuple[str, ...] | None = None

    def _fields(self) -> dict[str, object]:
        return {"id": self.id, **_selection(self.paths)}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(fields.path("id"), _read_selection(fields), seq=seq)


@dataclass(frozen=True, slots=True)
class Capture(Message):
    """Copy the view's layer into ``target``, a new directory (a checkpoint, a fork's seed;
    what a request cut short by a restart of this process left there is replaced), taking
    at most ``most_entries`` inodes and ``most_bytes`` bytes of the disk (ENOSPC past
    them)."""

    op: ClassVar[str] = "capture"
    id: str
    target: str
    most_entries: int
    most_bytes: int

    def _fields(self) -> dict[str, object]:
        return {
            "id": self.id,
            "target": self.target,
            "most_entries": self.most_entries,
            "most_bytes": self.most_bytes,
        }

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(
            fields.path("id"),
            fields.path("target"),
            fields.integer("most_entries"),
            fields.integer("most_bytes"),
            seq=seq,
        )


@dataclass(frozen=True, slots=True)
class Restore(Message):
    """Make the view's layer a copy of the one captured in ``source``."""

    op: ClassVar[str] = "restore"
    id: str
    source: str

    def _fields(self) -> dict[str, object]:
        return {"id": self.id, "source": self.source}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(fields.path("id"), fields.path("source"), seq=seq)


@dataclass(frozen=True, slots=True)
class WatchEvents(Message):
    """The view's events after ``after``; when there are none yet, answered at the next one,
    or after ``wait_ms`` with none. The first watch of a view starts its recording."""

    op: ClassVar[str] = "watch_events"
    id: str
    after: int
    wait_ms: int = 0

    def _fields(self) -> dict[str, object]:
        return {"id": self.id, "after": self.after, "wait_ms": self.wait_ms}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        ident, after = fields.path("id"), fields.integer("after")
        return cls(ident, after, fields.integer("wait_ms", most=60_000), seq=seq)


@dataclass(frozen=True, slots=True)
class Changed(Message):
    op: ClassVar[str] = "changed"
    lower: str
    paths: tuple[str, ...]

    def _fields(self) -> dict[str, object]:
        return {"lower": self.lower, "paths": list(self.paths)}

    @classmethod
    def _read(cls, fields: Fields, seq: int) -> Self:
        return cls(fields.path("lower"), fields.strings("paths"), seq=seq)


@dataclass(frozen=True, slots=True)
class Ping(Message):
    op: ClassVar[str] = "ping"


Request = (
    AddView
    | RemoveView
    | Commit
    | ListChanges
    | Apply
    | Discard
    | Capture
    | Restore
    | WatchEvents
    | Changed
    | Ping
)

REQUESTS: tuple[type[Request], ...] = (
    AddView,
    RemoveView,
    Commit,
    ListChanges,
    Apply,
    Discard,
    Capture,
    Restore,
    WatchEvents,
    Changed,
    Ping,
)
REPLIES: tuple[type[Reply], ...] = (Done, Committed, Changes, Captured, Events, Failed)
M = TypeVar("M", bound=Message)


def decode_request(data: bytes) -> Request:
    """The request in ``data``; MessageError when it is none."""
    return _decode(data, REQUESTS)


def decode_reply(data: bytes) -> Reply:
    """The reply in ``data``; MessageError when it is none."""
    return _decode(data, REPLIES)


def _decode(data: bytes, kinds: tuple[type[M], ...]) -> M:
    raw = parse(data, most=MAX_MESSAGE)
    seq = raw.get("seq")
    known = seq if type(seq) is int and 0 <= seq <= MAX_INT else None
    op = raw.pop("op", None)
    by_op = {kind.op: kind for kind in kinds}
    if type(op) is not str or op not in by_op:
        expected = ", ".join(sorted(by_op))
        raise MessageError(f"a message whose op {op!r} is not one of {expected}", seq=known)
    fields = Fields(raw, op, seq=known)
    message = by_op[op]._read(fields, fields.integer("seq"))
    fields.done()
    return message
