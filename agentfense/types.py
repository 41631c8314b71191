"""Public value types of the SDK: frozen dataclasses and string enums of our own.

The generated protobuf classes never leak out of the SDK; ``agentfense._convert`` maps
between them and these types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from os import PathLike
from typing import Any, final

from .errors import InvalidConfigurationError


class RuntimeType(StrEnum):
    """How a sandbox isolates its processes."""

    BWRAP = "bwrap"
    DOCKER = "docker"


class Permission(StrEnum):
    """Access level of a path: ``none < view < read < write``."""

    NONE = "none"
    VIEW = "view"
    READ = "read"
    WRITE = "write"

    @property
    def rank(self) -> int:
        """The level's order: 0 for ``none`` up to 3 for ``write``."""
        return _PERMISSION_RANK[self]


_PERMISSION_RANK = {Permission.NONE: 0, Permission.VIEW: 1, Permission.READ: 2, Permission.WRITE: 3}


class PatternType(StrEnum):
    """How a rule's pattern is matched: a glob, a directory and all below it, or one file."""

    GLOB = "glob"
    DIRECTORY = "directory"
    FILE = "file"


class SandboxStatus(StrEnum):
    """Where a sandbox is in its life: made, running, stopped, or broken (``error``)."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"
    ERROR = "error"


class SessionStatus(StrEnum):
    """Whether a session's shell is still there to run commands."""

    ACTIVE = "active"
    CLOSED = "closed"


class OutputStream(StrEnum):
    """Which of a command's output streams a chunk came from."""

    STDOUT = "stdout"
    STDERR = "stderr"


class CommitMode(StrEnum):
    """When a sandbox's writes reach its codebase: after every command (``auto``, last
    committer wins per file), or only when committed (``manual``: reviewed, checked for
    conflicts; see docs/review.md)."""

    AUTO = "auto"
    MANUAL = "manual"


class ChangeKind(StrEnum):
    """How a path of a sandbox differs from its codebase."""

    ADDED = "added"  # in the sandbox only
    MODIFIED = "modified"  # both, of one type: another content, symlink target or mode
    DELETED = "deleted"  # in the codebase only
    TYPE_CHANGED = "type_changed"  # both, of different types (a file and a directory, say)


class EntryType(StrEnum):
    """What an entry of a tree is."""

    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"


class EventKind(StrEnum):
    """What a sandbox event reports."""

    CREATED = "created"
    MODIFIED = "modified"  # content, mode, times or extended attributes
    DELETED = "deleted"
    RENAMED = "renamed"  # ``path`` to ``to``
    DENIED = "denied"  # refused by the sandbox's permissions
    LOST = "lost"  # ``count`` events were missed (the server keeps the last 1,024)


class NetworkVerdict(StrEnum):
    """What became of a connection a sandbox made through its proxy."""

    ALLOWED = "allowed"  # it reached the host
    DENIED = "denied"  # the sandbox's allow-list (or the server) refused it
    FAILED = "failed"  # allowed, but the host could not be resolved or reached


def _enum_value(enum: type[Enum], value: object, what: str) -> Any:
    try:
        return enum(value.value if isinstance(value, Enum) else str(value).lower())
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)
        raise InvalidConfigurationError(f"{what} must be one of {allowed}, not {value!r}") from None


@final
@dataclass(frozen=True, slots=True, init=False)
class PermissionRule:
    """Grants ``permission`` on the paths matched by ``pattern`` (from the workspace root)."""

    pattern: str
    permission: Permission
    type: PatternType
    priority: int

    # Written out rather than generated: it takes the levels and types as strings too
    # (``PermissionRule("/output/**", "write")``, as the docs show), and says so to mypy.
    def __init__(
        self,
        pattern: str,
        permission: Permission | str = Permission.READ,
        type: PatternType | str = PatternType.GLOB,
        priority: int = 0,
    ) -> None:
        if not isinstance(pattern, str) or not pattern.strip():
            raise InvalidConfigurationError("permission rule pattern must be a non-empty string")
        if "\x00" in pattern:
            raise InvalidConfigurationError("permission rule pattern must not contain NUL")
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "permission", _enum_value(Permission, permission, "permission"))
        object.__setattr__(self, "type", _enum_value(PatternType, type, "pattern type"))
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidConfigurationError("permission rule priority must be an int")
        object.__setattr__(self, "priority", priority)

    @classmethod
    def from_value(cls, value: PermissionRule | Mapping[str, Any]) -> PermissionRule:
        """Accept a rule or a dict such as ``{"pattern": "**/*", "permission": "read"}``."""
        if isinstance(value, PermissionRule):
            return value
        if not isinstance(value, Mapping):
            raise InvalidConfigurationError(
                f"a permission rule must be a PermissionRule or a dict, not {type(value).__name__}"
            )
        unknown = set(value) - {"pattern", "permission", "type", "priority"}
        if unknown:
            raise InvalidConfigurationError(
                f"unknown permission rule keys: {', '.join(sorted(unknown))}"
            )
        if "pattern" not in value:
            raise InvalidConfigurationError("permission rule needs a 'pattern'")
        return cls(
            pattern=value["pattern"],
            permission=value.get("permission", Permission.READ),
            type=value.get("type", PatternType.GLOB),
            priority=value.get("priority", 0),
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule as a plain dict (``pattern``, ``permission``, ``type``, ``priority``)."""
        return {
            "pattern": self.pattern,
            "permission": self.permission.value,
            "type": self.type.value,
            "priority": self.priority,
        }


@final
@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """Limits for every process of a sandbox; ``None`` leaves a limit unset."""

    memory_bytes: int | None = None
    cpu_quota: int | None = None
    cpu_shares: int | None = None
    pids_limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "cpu_quota", "cpu_shares", "pids_limit"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise InvalidConfigurationError(f"resources.{name} must be a non-negative int")

    @property
    def is_empty(self) -> bool:
        """Whether no limit is set (each is ``None`` or 0)."""
        return all(
            v is None or v == 0
            for v in (self.memory_bytes, self.cpu_quota, self.cpu_shares, self.pids_limit)
        )


@final
@dataclass(frozen=True, slots=True)
class TLSConfig:
    """How the SDK checks the server's TLS certificate, and the one it shows (mutual TLS).

    ``ca``: the CA bundle to trust, a PEM file's path or PEM bytes (``None``: the system's
    trust store). ``cert``: the client's certificate (chain), a PEM file's path, for a
    server that requires one; ``key``: its private key's path (``None``: in ``cert``'s
    file). Giving one turns TLS on, as ``secure=True`` does.
    """

    ca: str | PathLike[str] | bytes | None = None
    cert: str | PathLike[str] | None = None
    key: str | PathLike[str] | None = None

    def __post_init__(self) -> None:
        if self.ca is not None and not isinstance(self.ca, str | PathLike | bytes):
            raise InvalidConfigurationError("tls.ca must be a path or PEM bytes")
        for name in ("cert", "key"):
            if getattr(self, name) is not None and not isinstance(
                getattr(self, name), str | PathLike
            ):
                raise InvalidConfigurationError(f"tls.{name} must be a path")
        if self.key is not None and self.cert is None:
            raise InvalidConfigurationError("tls.key needs tls.cert (the certificate it signs)")


@final
@dataclass(frozen=True, slots=True)
class ExecResult:
    """The outcome of one command: both streams whole, the exact exit code, the wall time."""

    stdout: str
    stderr: str
    exit_code: int
    duration: timedelta = field(default_factory=timedelta)
    # The sandbox's resource limit the command ran into: "memory" (killed by it), "pids".
    limit_exceeded: str | None = None
    # What the sandbox's network proxy refused while the command ran ("host:port"; a DNS
    # lookup as the name), each once: ``sandbox.network_log()`` says why.
    network_denied: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the command exited 0."""
        return self.exit_code == 0


@final
@dataclass(frozen=True, slots=True)
class OutputChunk:
    """A piece of a streamed command's output, tagged with the stream it came from."""

    stream: OutputStream
    data: bytes


@final
@dataclass(frozen=True, slots=True)
class Codebase:
    """A codebase on the server: its files' total ``size`` in bytes and ``file_count``."""

    id: str
    name: str
    owner_id: str
    size: int
    file_count: int
    created_at: datetime | None = None
    updated_at: datetime | None = None


@final
@dataclass(frozen=True, slots=True)
class FileInfo:
    """One entry of a listing (``list_files``): a file or a directory."""

    path: str
    name: str
    is_dir: bool
    size: int
    modified_at: datetime | None = None


@final
@dataclass(frozen=True, slots=True)
class FileChange:
    """One path where a sandbox differs from its codebase (``sandbox.changes()``), relative
    to /workspace. ``type``, ``size`` and ``mode`` are the sandbox's entry's (the codebase's,
    when deleted)."""

    path: str
    kind: ChangeKind
    type: EntryType
    size: int
    mode: int


@final
@dataclass(frozen=True, slots=True)
class CommitConflict:
    """A change a commit left in the sandbox: the codebase changed that path since the
    sandbox first changed it (or the change could not be applied), and why."""

    path: str
    reason: str


@final
@dataclass(frozen=True, slots=True)
class CommitResult:
    """What ``sandbox.commit()`` applied to the codebase, and what it left (by path)."""

    applied: tuple[str, ...] = ()
    conflicts: tuple[CommitConflict, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A sandbox's changes at one moment (``sandbox.checkpoint()``): its files, not its
    processes. ``entries`` and ``size``: what it holds (entries, bytes of files)."""

    id: str
    sandbox_id: str
    name: str = ""
    created_at: datetime | None = None
    entries: int = 0
    size: int = 0


@final
@dataclass(frozen=True, slots=True)
class NetworkConnection:
    """One connection a sandbox made through its proxy, or one DNS lookup, packet sent past
    the proxy or raw socket it tried (``sandbox.network_log()``). ``kind``: ``"http"``,
    ``"connect"`` (HTTPS and other tunnels), ``"dns"``, ``"direct-tcp"``, ``"direct-udp"``...,
    ``"raw-socket"`` or ``"packet-socket"``; ``address``: what ``host`` resolved to;
    ``reason``: why it was denied or failed; the byte counts and ``duration`` so far, for one
    still open."""

    seq: int
    started_at: datetime
    kind: str
    host: str
    port: int
    verdict: NetworkVerdict
    address: str = ""
    reason: str = ""
    bytes_up: int = 0  # from the sandbox
    bytes_down: int = 0  # to the sandbox
    duration: timedelta = field(default_factory=timedelta)


@final
@dataclass(frozen=True, slots=True)
class SandboxEvent:
    """Something a sandbox's commands did to its files, or tried and were refused
    (``sandbox.events()``). ``path`` and ``to`` are relative to /workspace; ``operation``
    and ``rule`` say, for a refusal, what was tried and the rule that decided; ``count``,
    for ``lost``, how many events were missed."""

    kind: EventKind
    path: str = ""
    time: datetime | None = None
    seq: int = 0
    to: str = ""
    operation: str = ""
    rule: str = ""
    count: int = 0


@final
@dataclass(frozen=True, slots=True)
class UploadResult:
    """One uploaded file: its size in bytes and its SHA-256 (hex) as the server computed it."""

    codebase_id: str
    file_path: str
    size: int
    checksum: str


@final
@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """What the server says of a sandbox."""

    id: str
    codebase_id: str
    status: SandboxStatus
    permissions: tuple[PermissionRule, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    runtime: RuntimeType = RuntimeType.BWRAP
    image: str = ""
    resources: ResourceLimits = field(default_factory=ResourceLimits)
    created_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    expires_at: datetime | None = None
    keep_home: bool = False  # one $HOME for all its commands (else one each)
    commit_mode: CommitMode = CommitMode.AUTO
    network: tuple[str, ...] = ()  # the host patterns it may reach; none: no network


@final
@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the server says of a session: its sandbox, its shell, whether it is open."""

    id: str
    sandbox_id: str
    status: SessionStatus
    shell: str
    created_at: datetime | None = None
    closed_at: datetime | None = None
