"""Every sandbox of the server by id: its record, and the running sandbox a command needs.

The lifecycle (``sandboxes.SandboxManager``) adds and removes records; everything else that
looks a sandbox up (sessions, the sandbox file RPCs) does it here, never through the manager.
A call sees only its own tenant's sandboxes (``callers.may_see``): another's is not found.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio

from ..errors import InvalidConfigurationError, SandboxNotFoundError, SandboxNotRunningError
from ..runtimes.base import Prepared, SandboxHandle
from ..types import CommitMode, PermissionRule, ResourceLimits, RuntimeType, SandboxStatus
from .callers import may_see
from .network.connections import ConnectionLog
from .network.policy import NO_NETWORK, NetworkPolicy
from .tokens import LOCAL_TENANT

_ID_RE = re.compile(r"^sb_[0-9a-f]{16}$")
MAX_PAGE = 1000


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """One checkpoint of a sandbox's changes (``checkpoints.py``)."""

    id: str
    sandbox_id: str
    name: str
    created_at: datetime
    entries: int
    size: int
    made: int  # what it took of the disk: inodes (a linked file takes none)
    allocated: int  # and bytes


@dataclass
class SandboxRecord:
    id: str
    codebase_id: str
    permissions: tuple[PermissionRule, ...]
    runtime: RuntimeType
    image: str
    resources: ResourceLimits
    labels: dict[str, str]
    status: SandboxStatus = SandboxStatus.PENDING
    created_at: datetime = field(default_factory=now)
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    expires_at: datetime | None = None
    error: str = ""
    handle: SandboxHandle | None = None
    prepared: Prepared | None = None  # what its runtime began for a start to come
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    owner_id: str = ""  # its codebase's (a label)
    tenant: str = LOCAL_TENANT  # its codebase's: whose it is
    host_uid: int = 0  # its processes' uid on the host, its own while it exists
    keep_home: bool = False  # one $HOME for all its commands (else one each)
    commit_mode: CommitMode = CommitMode.AUTO  # manual: its writes wait for a review
    checkpoints: dict[str, CheckpointRecord] = field(default_factory=dict)  # oldest first
    network: NetworkPolicy = NO_NETWORK  # what it may reach through its proxy
    network_log: ConnectionLog | None = None  # (with a network: for its whole life)
    proxy: anyio.CancelScope | None = None  # its proxy's, while it runs


def _not_found(sandbox_id: str) -> SandboxNotFoundError:
    return SandboxNotFoundError(f"sandbox {sandbox_id[:64]!r} not found")


class SandboxTable:
    def __init__(self) -> None:
        self._records: dict[str, SandboxRecord] = {}

    def __iter__(self) -> Iterator[SandboxRecord]:
        return iter(list(self._records.values()))

    def add(self, record: SandboxRecord) -> None:
        self._records[record.id] = record

    def remove(self, sandbox_id: str) -> None:
        self._records.pop(sandbox_id, None)

    def find(self, sandbox_id: str) -> SandboxRecord | None:
        return self._records.get(sandbox_id)

    def __contains__(self, sandbox_id: str) -> bool:
        return sandbox_id in self._records

    def get(self, sandbox_id: str) -> SandboxRecord:
        if not _ID_RE.match(sandbox_id):
            if not sandbox_id:
                raise InvalidConfigurationError("sandbox_id must not be empty")
            raise _not_found(sandbox_id)
        record = self._records.get(sandbox_id)
        if record is None or not may_see(record.tenant):  # (another tenant's: none, to it)
            raise _not_found(sandbox_id)
        return record

    def running(self, sandbox_id: str) -> tuple[SandboxRecord, SandboxHandle]:
        """The sandbox and its processes; SandboxNotRunningError unless it runs."""
        record = self.get(sandbox_id)
        handle = record.handle
        if record.status is not SandboxStatus.RUNNING or handle is None:
            raise SandboxNotRunningError(
                f"sandbox {record.id} is not running (status: {record.status.value})"
            )
        if not handle.alive:
            record.status, record.error = SandboxStatus.ERROR, "the sandbox's processes died"
            raise SandboxNotRunningError(f"sandbox {record.id} is not running (its processes died)")
        return record, handle

    def held_by(self, tenant: str) -> int:
        return sum(r.tenant == tenant for r in self._records.values())

    def uses_codebase(self, codebase_id: str) -> bool:
        return any(r.codebase_id == codebase_id for r in self._records.values())

    def page(
        self, codebase_id: str, page_size: int, page_token: str
    ) -> tuple[list[SandboxRecord], str]:
        """Up to ``page_size`` of the caller's sandboxes (of the codebase, if given) in
        creation order, after the one the token names; and the next page's token ("" at the
        end)."""
        if page_size < 0:
            raise InvalidConfigurationError("page_size must not be negative")
        size = min(page_size or 100, MAX_PAGE)
        records = sorted(
            (r for r in self._records.values() if may_see(r.tenant)),
            key=lambda r: (r.created_at, r.id),
        )
        if codebase_id:
            records = [r for r in records if r.codebase_id == codebase_id]
        if page_token:
            after = _decode_token(page_token)
            records = [r for r in records if (r.created_at.isoformat(), r.id) > after]
        page = records[:size]
        token = _encode_token(page[-1]) if len(records) > size else ""
        return page, token


def _encode_token(record: SandboxRecord) -> str:
    raw = f"{record.created_at.isoformat()}|{record.id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> tuple[str, str]:
    try:
        created, _, ident = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
    except (ValueError, UnicodeDecodeError):
        raise InvalidConfigurationError("page_token is not a token this server issued") from None
    if not _ID_RE.match(ident):
        raise InvalidConfigurationError("page_token is not a token this server issued")
    return created, ident
