"""Persistent codebases on the host disk: ``root/<id>/meta.json`` and the tree in ``files/``.

Every path inside a codebase is opened component by component relative to a directory fd with
``O_NOFOLLOW``, so a symlink planted in a tree (by a sandbox, or by hand) is never followed on
the host. Uploads stream into a temporary file beside the tree and are renamed into place.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..errors import (
    CodebaseNotFoundError,
    InvalidConfigurationError,
    ResourceLimitExceededError,
)
from ..fs._host import remove_tree
from ._codebase_tree import (
    _ID_RE,
    FileRecord,
    _check_upload_target,
    _commit_upload,
    _create_temp,
    _discard_temp,
    _list_files,
    _not_found,
    _open_for_read,
    _write_all,
    holding_codebase,
)
from ._paths import InvalidPathError, normalize_relpath
from .callers import creating_tenant, may_see
from .codebase_usage import CodebaseUsage, Usage
from .log_lines import log_event
from .quotas import DEFAULT_QUOTA, Quotas
from .tokens import LOCAL_TENANT

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "CodebaseRecord", "CodebaseStore", "FileRecord"]

_log = logging.getLogger(__name__)
_lifecycle = logging.getLogger("agentfense.server.lifecycle")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_NAME_LENGTH = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_BUFFER = 1 << 20
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class CodebaseRecord:
    id: str
    name: str
    owner_id: str
    created_at: datetime
    updated_at: datetime
    tenant: str = LOCAL_TENANT  # whose it is (owner_id is a label the client chose)


async def _run(func: Callable[..., _T], *args: Any) -> _T:
    try:
        return await anyio.to_thread.run_sync(functools.partial(func, *args))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceLimitExceededError(
                "the server's disk is full: no room is left for codebases; free some space "
                "(delete codebases or files) and try again"
            ) from None
        raise


def _relpath(raw: str, field: str, *, allow_root: bool = False) -> str:
    try:
        return normalize_relpath(raw, allow_root=allow_root)
    except InvalidPathError as err:
        raise InvalidConfigurationError(err.for_field(field)) from None


def _check_text(value: object, field: str, *, required: bool) -> str:
    if not isinstance(value, str):
        raise InvalidConfigurationError(f"{field} must be a string")
    if required and not value.strip():
        raise InvalidConfigurationError(f"{field} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidConfigurationError(f"{field} must be at most {MAX_NAME_LENGTH} characters")
    if "\x00" in value:
        raise InvalidConfigurationError(f"{field} must not contain NUL bytes")
    return value


def _meta_to_json(record: CodebaseRecord) -> str:
    meta = {
        "id": record.id,
        "name": record.name,
        "owner_id": record.owner_id,
        "tenant": record.tenant,
    }
    for key in ("created_at", "updated_at"):
        meta[key] = getattr(record, key).isoformat()
    return json.dumps(meta, indent=2)


def _meta_from_json(text: str) -> CodebaseRecord:
    data = json.loads(text)
    record = CodebaseRecord(
        id=str(data["id"]),
        name=str(data["name"]),
        owner_id=str(data.get("owner_id", "")),
        # (a codebase of a server from before tenants: its own user's)
        tenant=str(data.get("tenant", LOCAL_TENANT)),
        created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
    )
    if record.created_at.tzinfo is None or record.updated_at.tzinfo is None:
        raise ValueError("timestamps must carry a time zone")
    return record


def _write_meta(codebase_dir: Path, record: CodebaseRecord) -> None:
    temp = codebase_dir / f".meta-{secrets.token_hex(4)}.tmp"
    try:
        temp.write_text(_meta_to_json(record), encoding="utf-8")
        os.replace(temp, codebase_dir / "meta.json")
    except BaseException:
        temp.unlink(missing_ok=True)  # (a full disk): no half-written copy left behind
        raise


def _create_dirs(codebase_dir: Path, record: CodebaseRecord) -> None:
    codebase_dir.mkdir(mode=0o755)
    try:
        (codebase_dir / "files").mkdir(mode=0o755)
        (codebase_dir / "tmp").mkdir(mode=0o700)
        _write_meta(codebase_dir, record)
    except BaseException:
        remove_tree(codebase_dir)
        raise


def _load_all(root: Path) -> builtins.list[CodebaseRecord]:
    root.mkdir(parents=True, exist_ok=True)
    records: builtins.list[CodebaseRecord] = []
    for entry in root.iterdir():
        if entry.name.startswith(".trash-"):
            remove_tree(entry)
            continue
        if not _ID_RE.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        files = entry / "files"
        if not (entry / "meta.json").exists() and (not files.is_dir() or not any(files.iterdir())):
            remove_tree(entry)  # a creation cut short (the server was killed): nothing in it
            continue
        try:
            record = _meta_from_json((entry / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as err:
            _log.warning("skipping codebase directory %s: %s", entry, err)
            continue
        if record.id != entry.name:
            _log.warning("skipping codebase directory %s: meta.json names %s", entry, record.id)
            continue
        (entry / "files").mkdir(mode=0o755, exist_ok=True)
        for temp in entry.glob(".meta-*.tmp"):  # a write of meta.json cut short
            temp.unlink()
        tmp = entry / "tmp"
        remove_tree(tmp)
        tmp.mkdir(mode=0o700)
        records.append(record)
    return records


def _encode_token(record: CodebaseRecord) -> str:
    raw = f"{record.created_at.isoformat()}|{record.id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_token(token: str) -> tuple[datetime, str]:
    invalid = InvalidConfigurationError(
        "page_token is not valid; pass the next_page_token of a previous ListCodebases call"
    )
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
        created, _, codebase_id = raw.partition("|")
        created_at = datetime.fromisoformat(created)
    except (ValueError, UnicodeError, binascii.Error):
        raise invalid from None
    if not _ID_RE.fullmatch(codebase_id) or created_at.tzinfo is None:
        raise invalid
    return created_at, codebase_id


class CodebaseStore:
    """Codebases kept under ``root``; call :meth:`load` once before use."""

    def __init__(self, root: Path, quotas: Quotas | None = None) -> None:
        self._root = Path(root)
        self._quotas = quotas or Quotas(DEFAULT_QUOTA, {})
        self._records: dict[str, CodebaseRecord] = {}
        self._usage = CodebaseUsage()
        self._meta_lock = anyio.Lock()
        self._unsaved: set[str] = set()  # ids whose meta.json lags the record

    @property
    def root(self) -> Path:
        return self._root

    async def load(self) -> None:
        """Read every codebase's metadata from disk (and clear leftovers of a crash)."""
        records = await _run(_load_all, self._root)
        self._records = {r.id: r for r in records}
        for record in records:
            self._usage.track(record.id, record.tenant, None)

    def _record(self, codebase_id: str) -> CodebaseRecord:
        if codebase_id == "":
            raise InvalidConfigurationError("codebase_id must not be empty")
        record = self._records.get(codebase_id) if isinstance(codebase_id, str) else None
        if record is None or not may_see(record.tenant):  # (another tenant's: none, to it)
            raise _not_found(str(codebase_id))
        return record

    def _dir(self, codebase_id: str) -> Path:
        return self._root / codebase_id

    def files_dir(self, codebase_id: str) -> Path:
        """The host directory holding the codebase's tree (what a sandbox binds)."""
        return self._dir(self._record(codebase_id).id) / "files"

    def exists(self, codebase_id: str) -> bool:
        return codebase_id in self._records

    async def create(self, name: str, owner_id: str = "") -> CodebaseRecord:
        name = _check_text(name, "name", required=True)
        owner_id = _check_text(owner_id or "", "owner_id", required=False)
        tenant = creating_tenant()
        held = sum(r.tenant == tenant for r in self._records.values())
        now = datetime.now(UTC)
        record = CodebaseRecord(
            id=f"cb_{secrets.token_hex(8)}",
            name=name,
            owner_id=owner_id,
            created_at=now,
            updated_at=now,
            tenant=tenant,
        )
        with self._quotas.reserve(tenant, "codebases", held):
            await _run(_create_dirs, self._dir(record.id), record)
            self._records[record.id] = record
            self._usage.track(record.id, tenant, Usage(0, 0, 0))
        log_event(
            _lifecycle,
            logging.INFO,
            "codebase created",
            codebase_id=record.id,
            tenant=tenant,
            owner=owner_id,
            name=name,
        )
        return record

    async def get(self, codebase_id: str) -> CodebaseRecord:
        return self._record(codebase_id)

    async def list(
        self, owner_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[CodebaseRecord], str]:
        """One page of the caller's codebases (of ``owner_id`` if given), and the next
        page's token."""
        if page_size < 0:
            raise InvalidConfigurationError("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        records = sorted(
            (
                r
                for r in self._records.values()
                if may_see(r.tenant) and (not owner_id or r.owner_id == owner_id)
            ),
            key=lambda r: (r.created_at, r.id),
        )
        if page_token:
            after = _decode_token(page_token)
            records = [r for r in records if (r.created_at, r.id) > after]
        page = records[:size]
        next_token = _encode_token(page[-1]) if len(records) > size else ""
        return page, next_token

    async def delete(self, codebase_id: str) -> None:
        """Remove the codebase and its tree from disk."""
        record = self._record(codebase_id)
        trash = self._root / f".trash-{record.id}-{secrets.token_hex(4)}"
        # Whole or not at all, whatever happens to the caller: a record without its
        # directory would break every listing.
        with anyio.CancelScope(shield=True):
            # Gone at once: no sandbox or upload starts on it while its tree is moved away.
            self._records.pop(record.id, None)
            try:
                await _run(os.rename, self._dir(record.id), trash)
            except BaseException:
                self._records[record.id] = record
                raise
            self._usage.forget(record.id)
            await _run(remove_tree, trash)
        log_event(
            _lifecycle,
            logging.INFO,
            "codebase deleted",
            codebase_id=record.id,
            tenant=record.tenant,
            owner=record.owner_id,
        )

    async def touch(self, codebase_id: str) -> CodebaseRecord:
        """Bump ``updated_at`` (after any change of the tree) and persist it.

        Touches coalesce: while one write of meta.json is in flight, later touches update the
        record in memory only, and that writer persists the latest records before it returns.
        """
        record = self._record(codebase_id)
        record = replace(record, updated_at=max(datetime.now(UTC), record.updated_at))
        self._records[record.id] = record
        self._unsaved.add(record.id)
        if self._meta_lock.locked():
            return record
        async with self._meta_lock:
            while self._unsaved:
                ident = self._unsaved.pop()
                latest = self._records.get(ident)
                if latest is None:
                    continue
                try:
                    await _run(_write_meta, self._dir(ident), latest)
                except ResourceLimitExceededError:  # the change it follows stands: say so
                    _log.warning("codebase %s: updated_at not saved: the disk is full", ident)
        return record

    async def upload(
        self,
        codebase_id: str,
        rel_path: str,
        total_size: int,
        chunks: AsyncIterator[bytes],
        max_bytes: int,
        *,
        touch: bool = True,
        executable: bool = False,
    ) -> tuple[int, str]:
        """Stream ``chunks`` into ``rel_path``; returns ``(size, sha256 hex)``.

        The file appears atomically when complete; a refused or broken upload leaves nothing.
        ``chunks`` is closed (``aclose``) when the upload ends. ``touch=False`` leaves the
        ``updated_at`` bump to the caller (once for many files). ``executable`` files get
        mode 0755, others 0644.
        """
        record = self._record(codebase_id)
        path = _relpath(rel_path, "file_path")
        parts = path.split("/")
        if total_size < 0:
            raise InvalidConfigurationError("total_size must not be negative")
        if total_size > max_bytes:
            raise ResourceLimitExceededError(
                f"file {path} ({total_size} bytes) exceeds the upload limit of {max_bytes} bytes"
            )
        files_dir = self._dir(record.id) / "files"
        # Before any data: the target, and room for the file (as declared) and the
        # directories it makes, reserved until it is in place.
        entries = await _run(_check_upload_target, files_dir, record.id, parts)
        with contextlib.ExitStack() as room:
            await self._reserve_room(room, record.tenant, total_size, entries)
            size, checksum = await self._receive(
                record, parts, total_size, chunks, max_bytes, executable, room
            )
        if touch and self.exists(record.id):
            await self.touch(record.id)
        return size, checksum

    async def _receive(
        self,
        record: CodebaseRecord,
        parts: builtins.list[str],
        total_size: int,
        chunks: AsyncIterator[bytes],
        max_bytes: int,
        executable: bool,
        room: contextlib.ExitStack,
    ) -> tuple[int, str]:
        """The upload's data, put in place and counted (its room reserved in ``room``)."""
        path = "/".join(parts)
        files_dir = self._dir(record.id) / "files"
        temp = self._dir(record.id) / "tmp" / f"upload-{secrets.token_hex(8)}"
        digest = hashlib.sha256()

        def open_temp() -> int:
            try:
                return _create_temp(temp, executable)
            except FileNotFoundError:
                raise _not_found(record.id) from None

        def write_whole(data: bytearray) -> tuple[int, int, int]:
            """A file that fits the write buffer: everything in one trip to a thread."""
            fd = open_temp()
            try:
                _write_all(fd, data, digest)
                closing, fd = fd, -1
                os.close(closing)
                return _commit_upload(temp, files_dir, record.id, parts)
            finally:
                _discard_temp(fd, temp)

        fd = -1
        size = 0
        try:
            buffer = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ResourceLimitExceededError(
                        f"file {path} exceeds the upload limit of {max_bytes} bytes"
                    )
                if total_size and size > total_size:
                    raise InvalidConfigurationError(
                        f"total_size is {total_size} bytes but more data was sent"
                    )
                buffer += chunk
                if len(buffer) >= _WRITE_BUFFER:
                    if fd < 0:
                        fd = await _run(open_temp)
                    data, buffer = buffer, bytearray()
                    await _run(_write_all, fd, data, digest)
            if total_size and size != total_size:
                raise InvalidConfigurationError(
                    f"total_size is {total_size} bytes but {size} bytes were sent"
                )
            if not total_size:  # (what was sent, when no size was declared)
                await self._reserve_room(room, record.tenant, size, 0)
            if fd < 0:
                async with holding_codebase(files_dir, record.id):
                    grown = await _run(write_whole, buffer)
            else:
                if buffer:
                    await _run(_write_all, fd, buffer, digest)
                closing, fd = fd, -1
                await _run(os.close, closing)
                async with holding_codebase(files_dir, record.id):
                    grown = await _run(_commit_upload, temp, files_dir, record.id, parts)
            self.usage_changed(record.id, *grown)
            room.close()  # (counted now, no longer reserved)
        finally:
            with anyio.CancelScope(shield=True):
                await _run(_discard_temp, fd, temp)
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
        return size, digest.hexdigest()

    async def download(
        self, codebase_id: str, rel_path: str, chunk_size: int = 64 * 1024
    ) -> AsyncGenerator[bytes, None]:
        """The content of a regular file, in chunks of at most ``chunk_size`` bytes."""
        record = self._record(codebase_id)
        path = _relpath(rel_path, "file_path")
        if chunk_size <= 0:
            raise InvalidConfigurationError("chunk_size must be positive")
        fd = await _run(_open_for_read, self._dir(record.id) / "files", record.id, path.split("/"))
        try:
            while True:
                data = await _run(os.read, fd, chunk_size)
                if not data:
                    return
                yield data
        finally:
            os.close(fd)

    async def list_files(
        self,
        codebase_id: str,
        path: str = "",
        recursive: bool = False,
        most: int = 100_000,
    ) -> builtins.list[FileRecord]:
        """Entries under ``path`` ("" or "/" is the root), sorted by path; links not followed;
        ResourceLimitExceededError beyond ``most`` of them."""
        record = self._record(codebase_id)
        rel = _relpath(path, "path", allow_root=True)
        files = self._dir(record.id) / "files"
        return await _run(_list_files, files, record.id, rel, recursive, most)

    async def stats(self, codebase_id: str) -> tuple[int, int]:
        """``(total bytes, number)`` of the regular files in the tree (``codebase_usage``)."""
        record = self._record(codebase_id)
        usage = await self._counted(record, files=True)
        assert usage.files is not None
        return usage.size, usage.files

    async def _counted(self, record: CodebaseRecord, *, files: bool) -> Usage:
        files_dir = self._dir(record.id) / "files"
        return await self._usage.count(record.id, record.tenant, files_dir, files=files)

    # -- what a tenant's codebases hold, against its quota -----------------------------------

    def usage_changed(
        self, codebase_id: str, size: int, entries: int, files: int | None = None
    ) -> None:
        """The codebase's tree grew by ``size`` bytes, ``entries`` entries and ``files``
        regular files (an upload; None: a number not known, a sandbox's commit); negative
        when it shrank."""
        self._usage.changed(codebase_id, size, entries, files)

    async def _reserve_room(
        self, room: contextlib.ExitStack, tenant: str, size: int, entries: int
    ) -> None:
        """Reserve, in ``room``, ``size`` bytes and ``entries`` entries more for the
        tenant's codebases; refused beyond its quota."""
        quota = self._quotas.of(tenant)
        if not quota.codebase_bytes and not quota.codebase_entries:
            return
        await self._count(tenant)
        held_bytes, held_entries = self._usage.held(tenant)  # (then reserved: no await between)
        room.enter_context(self._quotas.reserve(tenant, "codebase_bytes", held_bytes, size))
        room.enter_context(self._quotas.reserve(tenant, "codebase_entries", held_entries, entries))

    async def _count(self, tenant: str) -> None:
        """Count what each of the tenant's codebases holds, where not known yet."""
        for codebase_id in self._usage.uncounted(tenant):
            record = self._records.get(codebase_id)
            if record is not None:
                with contextlib.suppress(CodebaseNotFoundError):  # deleted meanwhile
                    await self._counted(record, files=False)
