"""Conversions between the generated ``sandbox.v1`` messages and the SDK's public types.

Pure functions, shared by the SDK and the server. The protobuf default of a timestamp (the
epoch) means "unset" and becomes ``None``; enum ``UNSPECIFIED`` values are refused where a
value is required.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ._proto.sandbox import v1 as pb
from .errors import InvalidConfigurationError
from .types import (
    ChangeKind,
    Checkpoint,
    Codebase,
    CommitConflict,
    CommitMode,
    CommitResult,
    EntryType,
    EventKind,
    ExecResult,
    FileChange,
    FileInfo,
    NetworkConnection,
    NetworkVerdict,
    PatternType,
    Permission,
    PermissionRule,
    ResourceLimits,
    RuntimeType,
    SandboxEvent,
    SandboxInfo,
    SandboxStatus,
    SessionInfo,
    SessionStatus,
    UploadResult,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The generated members are named through their enum (``pb.Permission(pb.Permission.NONE)``,
# the same object): betterproto 2.0.0b7 builds its Enum on a base mypy cannot read, so mypy
# takes a bare ``pb.Permission.NONE`` for an int (upstream issue #600), where the generated
# messages' fields expect the enum.
PERMISSION_TO_PB = {
    Permission.NONE: pb.Permission(pb.Permission.NONE),
    Permission.VIEW: pb.Permission(pb.Permission.VIEW),
    Permission.READ: pb.Permission(pb.Permission.READ),
    Permission.WRITE: pb.Permission(pb.Permission.WRITE),
}
PERMISSION_FROM_PB = {v: k for k, v in PERMISSION_TO_PB.items()}
PATTERN_TO_PB = {
    PatternType.GLOB: pb.PatternType(pb.PatternType.GLOB),
    PatternType.DIRECTORY: pb.PatternType(pb.PatternType.DIRECTORY),
    PatternType.FILE: pb.PatternType(pb.PatternType.FILE),
}
PATTERN_FROM_PB = {v: k for k, v in PATTERN_TO_PB.items()}
STATUS_TO_PB = {
    SandboxStatus.PENDING: pb.SandboxStatus(pb.SandboxStatus.PENDING),
    SandboxStatus.RUNNING: pb.SandboxStatus(pb.SandboxStatus.RUNNING),
    SandboxStatus.STOPPED: pb.SandboxStatus(pb.SandboxStatus.STOPPED),
    SandboxStatus.ERROR: pb.SandboxStatus(pb.SandboxStatus.ERROR),
}
STATUS_FROM_PB = {v: k for k, v in STATUS_TO_PB.items()}
SESSION_STATUS_TO_PB = {
    SessionStatus.ACTIVE: pb.SessionStatus(pb.SessionStatus.ACTIVE),
    SessionStatus.CLOSED: pb.SessionStatus(pb.SessionStatus.CLOSED),
}
SESSION_STATUS_FROM_PB = {v: k for k, v in SESSION_STATUS_TO_PB.items()}
COMMIT_MODE_TO_PB = {
    CommitMode.AUTO: pb.CommitMode(pb.CommitMode.AUTO),
    CommitMode.MANUAL: pb.CommitMode(pb.CommitMode.MANUAL),
}
COMMIT_MODE_FROM_PB = {v: k for k, v in COMMIT_MODE_TO_PB.items()}
CHANGE_KIND_TO_PB = {
    ChangeKind.ADDED: pb.ChangeKind(pb.ChangeKind.ADDED),
    ChangeKind.MODIFIED: pb.ChangeKind(pb.ChangeKind.MODIFIED),
    ChangeKind.DELETED: pb.ChangeKind(pb.ChangeKind.DELETED),
    ChangeKind.TYPE_CHANGED: pb.ChangeKind(pb.ChangeKind.TYPE_CHANGED),
}
CHANGE_KIND_FROM_PB = {v: k for k, v in CHANGE_KIND_TO_PB.items()}
ENTRY_TYPE_TO_PB = {
    EntryType.FILE: pb.EntryType(pb.EntryType.FILE),
    EntryType.DIRECTORY: pb.EntryType(pb.EntryType.DIRECTORY),
    EntryType.SYMLINK: pb.EntryType(pb.EntryType.SYMLINK),
    EntryType.OTHER: pb.EntryType(pb.EntryType.OTHER),
}
ENTRY_TYPE_FROM_PB = {v: k for k, v in ENTRY_TYPE_TO_PB.items()}
RUNTIME_TO_PB = {
    RuntimeType.BWRAP: pb.RuntimeType(pb.RuntimeType.BWRAP),
    RuntimeType.DOCKER: pb.RuntimeType(pb.RuntimeType.DOCKER),
}
RUNTIME_FROM_PB = {v: k for k, v in RUNTIME_TO_PB.items()}


def timestamp(value: datetime | None) -> datetime | None:
    """A message's timestamp, ``None`` when unset."""
    if value is None or value == _EPOCH:
        return None
    return value


@functools.lru_cache(maxsize=1024)
def rule_to_pb(rule: PermissionRule) -> pb.PermissionRule:
    """The rule's message (kept: a sandbox's reply carries all its rules each time; the
    message is shared, never to be changed)."""
    return pb.PermissionRule(
        pattern=rule.pattern,
        type=PATTERN_TO_PB[rule.type],
        permission=PERMISSION_TO_PB[rule.permission],
        priority=rule.priority,
    )


def rule_from_pb(message: pb.PermissionRule, index: int = 0) -> PermissionRule:
    """A rule off the wire; an unspecified type means glob, an unknown one and an unspecified
    level are refused (taken as a glob, a rule could grant what it does not say)."""
    if message.permission not in PERMISSION_FROM_PB:
        raise InvalidConfigurationError(
            f"permissions[{index}] ({message.pattern[:200]!r}) has no valid permission level"
        )
    if message.type == pb.PatternType.UNSPECIFIED:
        pattern_type = PatternType.GLOB
    elif message.type in PATTERN_FROM_PB:
        pattern_type = PATTERN_FROM_PB[message.type]
    else:
        raise InvalidConfigurationError(
            f"permissions[{index}] ({message.pattern[:200]!r}) has type {int(message.type)}, "
            "which is not a known pattern type (glob, directory or file)"
        )
    try:
        return _rule(
            message.pattern, PERMISSION_FROM_PB[message.permission], pattern_type, message.priority
        )
    except InvalidConfigurationError as exc:
        raise InvalidConfigurationError(f"permissions[{index}]: {exc.message}") from None


_KEPT_LISTS = 64  # rule lists converted, kept
_KEPT_RULES = 512  # the longest list kept (a preset has ~50 rules)
_kept: dict[tuple[int, ...], tuple[tuple[pb.PermissionRule, ...], tuple[PermissionRule, ...]]] = {}
_kept_lock = threading.Lock()


def rules_from_pb(messages: Sequence[pb.PermissionRule]) -> tuple[PermissionRule, ...]:
    """The rules of a message's repeated field, as :func:`rule_from_pb` makes them.

    Messages decoded through a ``_repeated_memo`` share the very same rule objects when their
    rules are the same (a preset's, a sandbox's in each reply), so a list of those objects is
    converted once and kept: it is known by the objects' identities, and the entry holds the
    objects themselves, so no other object can take one's identity while it is kept."""
    key = tuple(map(id, messages))
    with _kept_lock:
        kept = _kept.get(key)
    if kept is not None and all(a is b for a, b in zip(kept[0], messages, strict=True)):
        return kept[1]
    rules = tuple(rule_from_pb(message, index) for index, message in enumerate(messages))
    if len(messages) <= _KEPT_RULES:
        with _kept_lock:
            if len(_kept) >= _KEPT_LISTS:
                del _kept[next(iter(_kept))]  # the oldest
            _kept[key] = (tuple(messages), rules)
    return rules


@functools.lru_cache(maxsize=1024)
def _rule(pattern: str, level: Permission, kind: PatternType, priority: int) -> PermissionRule:
    """(kept: a PermissionRule checks its pattern when made, and replies repeat rules)"""
    return PermissionRule(pattern=pattern, permission=level, type=kind, priority=priority)


def resources_to_pb(limits: ResourceLimits | None) -> pb.ResourceLimits:
    limits = limits or ResourceLimits()
    return pb.ResourceLimits(
        memory_bytes=limits.memory_bytes or 0,
        cpu_quota=limits.cpu_quota or 0,
        cpu_shares=limits.cpu_shares or 0,
        pids_limit=limits.pids_limit or 0,
    )


def resources_from_pb(message: pb.ResourceLimits | None) -> ResourceLimits:
    if message is None:
        return ResourceLimits()
    fields = ("memory_bytes", "cpu_quota", "cpu_shares", "pids_limit")
    values = {name: getattr(message, name) for name in fields}
    for name, value in values.items():
        if value < 0:
            raise InvalidConfigurationError(f"resources.{name} must not be negative")
    return ResourceLimits(**{name: value or None for name, value in values.items()})


def sandbox_from_pb(message: pb.Sandbox) -> SandboxInfo:
    return SandboxInfo(
        id=message.id,
        codebase_id=message.codebase_id,
        status=STATUS_FROM_PB.get(message.status, SandboxStatus.PENDING),
        permissions=rules_from_pb(message.permissions),
        labels=dict(message.labels),
        runtime=RUNTIME_FROM_PB.get(message.runtime, RuntimeType.BWRAP),
        image=message.image,
        resources=resources_from_pb(message.resources),
        created_at=timestamp(message.created_at),
        started_at=timestamp(message.started_at),
        stopped_at=timestamp(message.stopped_at),
        expires_at=timestamp(message.expires_at),
        keep_home=message.keep_home,
        commit_mode=COMMIT_MODE_FROM_PB.get(message.commit_mode, CommitMode.AUTO),
        network=tuple(message.network.allow),
    )


def change_from_pb(message: pb.FileChange) -> FileChange:
    return FileChange(
        path=message.path,
        kind=CHANGE_KIND_FROM_PB.get(message.kind, ChangeKind.MODIFIED),
        type=ENTRY_TYPE_FROM_PB.get(message.type, EntryType.OTHER),
        size=message.size,
        mode=message.mode,
    )


def commit_result_from_pb(message: pb.CommitChangesResponse) -> CommitResult:
    return CommitResult(
        applied=tuple(message.applied),
        conflicts=tuple(CommitConflict(c.path, c.reason) for c in message.conflicts),
    )


def checkpoint_from_pb(message: pb.Checkpoint) -> Checkpoint:
    return Checkpoint(
        id=message.id,
        sandbox_id=message.sandbox_id,
        name=message.name,
        created_at=timestamp(message.created_at),
        entries=message.entries,
        size=message.size,
    )


EVENT_KIND_FROM_PB = {
    pb.EventKind(pb.EventKind.CREATED): EventKind.CREATED,
    pb.EventKind(pb.EventKind.MODIFIED): EventKind.MODIFIED,
    pb.EventKind(pb.EventKind.DELETED): EventKind.DELETED,
    pb.EventKind(pb.EventKind.RENAMED): EventKind.RENAMED,
    pb.EventKind(pb.EventKind.DENIED): EventKind.DENIED,
}


def events_from_pb(batch: pb.EventBatch) -> list[SandboxEvent]:
    """A batch's events, a ``lost`` one first when the watcher missed some."""
    events = [SandboxEvent(EventKind.LOST, count=batch.lost)] if batch.lost else []
    events.extend(
        SandboxEvent(
            kind=EVENT_KIND_FROM_PB.get(e.kind, EventKind.MODIFIED),
            path=e.path,
            time=timestamp(e.time),
            seq=e.seq,
            to=e.to,
            operation=e.operation,
            rule=e.rule,
        )
        for e in batch.events
    )
    return events


def codebase_from_pb(message: pb.Codebase) -> Codebase:
    return Codebase(
        id=message.id,
        name=message.name,
        owner_id=message.owner_id,
        size=message.size,
        file_count=message.file_count,
        created_at=timestamp(message.created_at),
        updated_at=timestamp(message.updated_at),
    )


def file_info_from_pb(message: pb.FileInfo) -> FileInfo:
    return FileInfo(
        path=message.path,
        name=message.name,
        is_dir=message.is_dir,
        size=message.size,
        modified_at=timestamp(message.modified_at),
    )


def upload_result_from_pb(message: pb.UploadResult) -> UploadResult:
    return UploadResult(
        codebase_id=message.codebase_id,
        file_path=message.file_path,
        size=message.size,
        checksum=message.checksum,
    )


def exec_result_from_pb(message: pb.ExecResult) -> ExecResult:
    return ExecResult(
        stdout=message.stdout,
        stderr=message.stderr,
        exit_code=message.exit_code,
        duration=message.duration or timedelta(),
        limit_exceeded=message.limit_exceeded or None,
        network_denied=tuple(message.network_denied),
    )


_VERDICTS_FROM_PB = {
    pb.NetworkVerdict.ALLOWED: NetworkVerdict.ALLOWED,
    pb.NetworkVerdict.DENIED: NetworkVerdict.DENIED,
    pb.NetworkVerdict.FAILED: NetworkVerdict.FAILED,
}


def network_connection_from_pb(message: pb.NetworkConnection) -> NetworkConnection:
    return NetworkConnection(
        seq=message.seq,
        started_at=timestamp(message.started_at) or _EPOCH,
        kind=message.kind,
        host=message.host,
        port=message.port,
        verdict=_VERDICTS_FROM_PB.get(message.verdict, NetworkVerdict.DENIED),
        address=message.address,
        reason=message.reason,
        bytes_up=message.bytes_up,
        bytes_down=message.bytes_down,
        duration=message.duration or timedelta(),
    )


def session_from_pb(message: pb.Session) -> SessionInfo:
    return SessionInfo(
        id=message.id,
        sandbox_id=message.sandbox_id,
        status=SESSION_STATUS_FROM_PB.get(message.status, SessionStatus.ACTIVE),
        shell=message.shell,
        created_at=timestamp(message.created_at),
        closed_at=timestamp(message.closed_at),
    )
