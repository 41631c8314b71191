"""Every conversion between the server's types and the wire's messages, both ways.

The enum tables and the conversions of the public types that the SDK shares live in
``agentfense._convert``; this module holds the server's side (its records and outcomes), and
the checks a request's fields get as they are decoded.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ... import _timeouts as timeouts
from ..._convert import (
    CHANGE_KIND_TO_PB,
    COMMIT_MODE_TO_PB,
    ENTRY_TYPE_TO_PB,
    RUNTIME_TO_PB,
    SESSION_STATUS_TO_PB,
    STATUS_TO_PB,
    resources_to_pb,
    rule_to_pb,
)
from ..._proto.sandbox import v1 as pb
from ...errors import InvalidConfigurationError
from ...fs import control
from ...types import ChangeKind, EntryType, PermissionRule
from .._codebase_tree import FileRecord
from .._paths import MAX_PATH_BYTES, wire_text
from ..codebases import CodebaseRecord
from ..commands import ExecParams
from ..execution import Outcome
from ..network.connections import Connection, Verdict
from ..sandbox_files import SandboxFile
from ..sandbox_table import CheckpointRecord, SandboxRecord
from ..sessions import Session
from .encoded import Encoded, repeated_field


def sandbox_reply(record: SandboxRecord) -> Encoded:
    """A ``Sandbox`` reply, encoded: its rules' records (47 of ``agent-safe``: 0.6 ms to
    encode, more than all the rest) are made once per distinct set of rules and appended
    (protobuf lets a message's fields come in any order)."""
    data = bytes(sandbox_to_pb(record, rules=False)) + _rules_field(record.permissions)
    return Encoded(data, record.id)


_KEPT_RULES = 512  # the longest set of rules whose encoding is kept


def _rules_field(rules: tuple[PermissionRule, ...]) -> bytes:
    if len(rules) > _KEPT_RULES:
        return repeated_field(3, map(rule_to_pb, rules))  # Sandbox.permissions = 3
    return _kept_rules_field(rules)


@functools.lru_cache(maxsize=64)
def _kept_rules_field(rules: tuple[PermissionRule, ...]) -> bytes:
    return repeated_field(3, map(rule_to_pb, rules))


def sandbox_to_pb(record: SandboxRecord, *, rules: bool = True) -> pb.Sandbox:
    """A sandbox's message (``rules=False``: without its rules)."""
    message = pb.Sandbox(
        id=record.id,
        codebase_id=record.codebase_id,
        permissions=[rule_to_pb(rule) for rule in record.permissions] if rules else [],
        status=STATUS_TO_PB[record.status],
        labels=dict(record.labels),
        created_at=record.created_at,
        runtime=RUNTIME_TO_PB[record.runtime],
        image=record.image,
        resources=resources_to_pb(record.resources),
        keep_home=record.keep_home,
        commit_mode=COMMIT_MODE_TO_PB[record.commit_mode],
        network=pb.NetworkPolicy(allow=list(record.network.texts)),
    )
    for name in ("started_at", "stopped_at", "expires_at"):
        value = getattr(record, name)
        if value is not None:
            setattr(message, name, value)
    return message


def session_to_pb(session: Session) -> pb.Session:
    message = pb.Session(
        id=session.id,
        sandbox_id=session.sandbox_id,
        status=SESSION_STATUS_TO_PB[session.status],
        shell=session.shell,
        created_at=session.created_at,
    )
    if session.closed_at is not None:
        message.closed_at = session.closed_at
    return message


def timeout_from_pb(request: pb.ExecRequest | pb.SessionExecRequest) -> float | None:
    return timeouts.from_wire(request.timeout, request.no_timeout)


def exec_result_to_pb(outcome: Outcome) -> pb.ExecResult:
    return pb.ExecResult(
        stdout=outcome.stdout.decode(errors="replace"),
        stderr=outcome.stderr.decode(errors="replace"),
        exit_code=outcome.exit_code,
        duration=timedelta(seconds=outcome.duration),
        limit_exceeded=outcome.limit_exceeded,
        network_denied=list(outcome.network_denied),
    )


# What a command, its environment and its workdir may take together (UTF-8 bytes), and how
# many variables it may set: they travel to the sandbox in one control message, and the
# kernel refuses a single argument over 128 KiB anyway (stdin is the way for more).
MAX_COMMAND_BYTES = 32 * 1024
MAX_ENV_VARS = 256


def check_command_text(
    command: str, env: dict[str, str], workdir: str = "", *, path_field: str = "workdir"
) -> None:
    """``path_field`` names what ``workdir`` is (a session's shell is a path too): a path the
    kernel could never take (over PATH_MAX) is refused here, not sent."""
    if len(workdir.encode(errors="replace")) > MAX_PATH_BYTES:
        raise InvalidConfigurationError(
            f"{path_field} must be at most {MAX_PATH_BYTES} bytes (PATH_MAX)"
        )
    if len(env) > MAX_ENV_VARS:
        raise InvalidConfigurationError(
            f"env: {len(env)} variables; at most {MAX_ENV_VARS} are allowed"
        )
    size = len(command.encode(errors="replace")) + len(workdir.encode(errors="replace"))
    size += sum(len(f"{k}={v}".encode(errors="replace")) for k, v in env.items())
    if size > MAX_COMMAND_BYTES:
        raise InvalidConfigurationError(
            f"command, env and workdir take {size} bytes; at most {MAX_COMMAND_BYTES} are "
            "allowed (pass large input as stdin, or in a file)"
        )


def exec_params_from_pb(request: pb.ExecRequest) -> ExecParams:
    check_command_text(request.command, request.env, request.workdir)
    return ExecParams(
        command=request.command,
        stdin=request.stdin.encode(),
        env=dict(request.env),
        workdir=request.workdir,
        timeout=timeout_from_pb(request),
    )


def codebase_to_pb(record: CodebaseRecord, size: int, file_count: int) -> pb.Codebase:
    return pb.Codebase(
        id=record.id,
        name=record.name,
        owner_id=record.owner_id,
        size=size,
        file_count=file_count,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def file_info_to_pb(record: FileRecord | SandboxFile) -> pb.FileInfo:
    """An entry of a codebase (the owner's view) or of a sandbox's view."""
    return pb.FileInfo(
        path=wire_text(record.path),
        name=wire_text(record.name),
        is_dir=record.is_dir,
        size=record.size,
        modified_at=record.modified_at,
    )


def list_files_reply(records: Sequence[FileRecord] | Sequence[SandboxFile]) -> bytes:
    """A listing's reply, ``ListFilesResponse``, encoded (up to ``max_list_entries`` entries:
    run it in a worker thread, off the loop every client shares)."""
    return repeated_field(1, (file_info_to_pb(record) for record in records))  # files = 1


def upload_result_to_pb(codebase_id: str, path: str, size: int, checksum: str) -> pb.UploadResult:
    return pb.UploadResult(codebase_id=codebase_id, file_path=path, size=size, checksum=checksum)


def changes_reply(reply: control.Changes) -> bytes:
    """A ListChangesResponse's bytes: its changes one by one, then how many there are."""
    changes = (
        pb.FileChange(
            path=wire_text(change.path),
            kind=CHANGE_KIND_TO_PB[ChangeKind(change.kind)],
            type=ENTRY_TYPE_TO_PB[EntryType(change.type)],
            size=change.size,
            mode=change.mode,
        )
        for change in reply.changes
    )
    return repeated_field(1, changes) + bytes(pb.ListChangesResponse(total=reply.total))


_VERDICTS = {
    Verdict.ALLOWED: pb.NetworkVerdict.ALLOWED,
    Verdict.DENIED: pb.NetworkVerdict.DENIED,
    Verdict.FAILED: pb.NetworkVerdict.FAILED,
}


def network_log_to_pb(connections: Sequence[Connection], dropped: int) -> pb.NetworkLog:
    return pb.NetworkLog(
        connections=[
            pb.NetworkConnection(
                seq=entry.seq,
                started_at=datetime.fromtimestamp(entry.started, UTC),
                kind=entry.kind,
                host=wire_text(entry.host),
                port=entry.port,
                address=entry.address,
                verdict=pb.NetworkVerdict(_VERDICTS[entry.verdict]),
                reason=wire_text(entry.reason),
                bytes_up=entry.bytes_up,
                bytes_down=entry.bytes_down,
                duration=timedelta(seconds=entry.duration),
            )
            for entry in connections
        ],
        dropped=dropped,
    )


def checkpoint_to_pb(record: CheckpointRecord) -> pb.Checkpoint:
    return pb.Checkpoint(
        id=record.id,
        sandbox_id=record.sandbox_id,
        name=record.name,
        created_at=record.created_at,
        entries=record.entries,
        size=record.size,
    )


_EVENT_KINDS = {
    "created": pb.EventKind(pb.EventKind.CREATED),
    "modified": pb.EventKind(pb.EventKind.MODIFIED),
    "deleted": pb.EventKind(pb.EventKind.DELETED),
    "renamed": pb.EventKind(pb.EventKind.RENAMED),
    "denied": pb.EventKind(pb.EventKind.DENIED),
}


def event_batch_to_pb(batch: control.Events) -> pb.EventBatch:
    return pb.EventBatch(
        events=[
            pb.SandboxEvent(
                seq=event.seq,
                time=datetime.fromtimestamp(event.time_ns / 1e9, UTC),
                kind=_EVENT_KINDS[event.kind],
                path=wire_text(event.path),
                to=wire_text(event.to),
                operation=event.operation,
                rule=wire_text(event.rule),
            )
            for event in batch.events
        ],
        lost=batch.lost,
    )
