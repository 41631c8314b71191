"""A sandbox's files through its own view: what ``ReadSandboxFile``, ``WriteSandboxFile`` and
``ListSandboxFiles`` serve. The view (a mount of the permission filesystem) applies the
sandbox's permissions to every access, made as the sandbox's uid (``owner``) so that the
kernel checks each open exactly as for the sandbox; every path is resolved beneath it without
following a symlink, so nothing a sandbox planted leads the server elsewhere on the host.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio

from ..errors import (
    InvalidConfigurationError,
    PermissionDeniedError,
    ResourceLimitExceededError,
    SandboxError,
    StatusCode,
)
from ..fs._host import HostTree
from ..fs._identity import acting_as
from ._codebase_tree import too_many_entries
from ._paths import InvalidPathError, normalize_relpath

WORKSPACE = "/workspace"
CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class SandboxFile:
    path: str  # relative to /workspace
    name: str
    is_dir: bool
    size: int
    modified_at: datetime


def workspace_relpath(path: str) -> str:
    """``src/a.py`` for ``/workspace/src/a.py`` or ``src/a.py``; "" for the workspace."""
    if path == WORKSPACE or path.startswith(WORKSPACE + "/"):
        path = path[len(WORKSPACE) :]
    elif path.startswith("/"):
        raise InvalidConfigurationError(f"path {path[:200]!r} is not under {WORKSPACE}")
    try:
        return normalize_relpath(path, allow_root=True)
    except InvalidPathError as exc:
        raise InvalidConfigurationError(exc.for_field("path")) from None


MAX_REVIEW_PATHS = 4096


def review_paths(paths: Sequence[str]) -> tuple[str, ...] | None:
    """The paths of a review request, relative to the workspace; None for every path (none
    given, or the workspace itself among them)."""
    if len(paths) > MAX_REVIEW_PATHS:
        raise InvalidConfigurationError(
            f"paths: {len(paths)} of them; at most {MAX_REVIEW_PATHS} are allowed"
        )
    relative = tuple(workspace_relpath(path) for path in paths)
    return None if not relative or "" in relative else tuple(sorted(set(relative)))


def _shown(rel: str) -> str:
    return f"{WORKSPACE}/{rel}" if rel else WORKSPACE


def _error(exc: OSError, what: str, rel: str) -> SandboxError:
    where = _shown(rel)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDeniedError(f"cannot {what} {where}: permission denied")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return SandboxError(f"file {where} not found in the sandbox", code=StatusCode.NOT_FOUND)
    if exc.errno == errno.ELOOP:
        return InvalidConfigurationError(f"{where} is a symbolic link; it is not followed")
    if exc.errno == errno.EISDIR:
        return InvalidConfigurationError(f"{where} is a directory")
    if exc.errno == errno.ENOSPC:
        return ResourceLimitExceededError(
            f"cannot {what} {where}: the sandbox may write no more before its next commit "
            "(max_delta_bytes, max_delta_entries), or its codebase is full "
            "(max_codebase_bytes, max_codebase_entries)"
        )
    return SandboxError(f"cannot {what} {where}: {exc.strerror}")


def _not_regular(rel: str, mode: int) -> SandboxError:
    where = _shown(rel)
    if stat.S_ISDIR(mode):
        return InvalidConfigurationError(f"{where} is a directory")
    if stat.S_ISLNK(mode):
        return InvalidConfigurationError(f"{where} is a symbolic link; it is not followed")
    return InvalidConfigurationError(
        f"{where} is not a regular file (a FIFO, a socket or a device); only regular files "
        "are read and written"
    )


def _open_regular(tree: HostTree, rel: str, flags: int) -> int:
    """An fd on a regular file, never blocking on the way: a FIFO the sandbox made must not
    hold a server thread until someone writes to it."""
    fd = tree.open(rel, flags | os.O_NONBLOCK, 0o644)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(rel, mode)
    os.set_blocking(fd, True)
    return fd


Owner = tuple[int, int]  # the sandbox's uid and gid on the host


async def read_file(view: Path, rel: str, owner: Owner) -> AsyncIterator[bytes]:
    """The file's content, chunk by chunk."""

    def open_file() -> int:
        with acting_as(*owner):
            tree = HostTree(view)
            try:
                return _open_regular(tree, rel, os.O_RDONLY)
            finally:
                tree.close()

    try:
        fd = await anyio.to_thread.run_sync(open_file)
    except OSError as exc:
        raise _error(exc, "read", rel) from None
    try:
        while data := await anyio.to_thread.run_sync(os.read, fd, CHUNK):
            yield data
    finally:
        os.close(fd)


def _open_temporary(tree: HostTree, rel: str) -> tuple[int, str | None]:
    """An fd to put the new content in: a new file beside the target in the view (``rel`` of
    it returned), or, when the sandbox may not create that name (a rule that grants only the
    target's exact name, a name too long for a prefix), none (-1, ``None``): the content then
    goes into the target itself. The target's parents are created, and a target that is not
    a regular file is refused before anything is written. Made as the sandbox's uid
    (``acting_as``)."""
    parent, _, name = rel.rpartition("/")
    tree.makedirs(parent)
    existing = tree.try_lstat(rel)
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise _not_regular(rel, existing.st_mode)
    temp = f".agentfense-{secrets.token_hex(6)}.{name}"
    temp = f"{parent}/{temp}" if parent else temp
    try:
        fd = tree.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.ENAMETOOLONG):
            raise
        return -1, None
    try:
        if existing is not None:
            os.fchmod(fd, stat.S_IMODE(existing.st_mode))
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            tree.unlink(temp)
        raise
    return fd, temp


def _check_writable(view: Path, rel: str, owner: Owner) -> None:
    """Refuse, before a byte is taken, a write the sandbox may not make: what putting the
    content in place does, without the content (a temporary made and removed at once)."""
    with acting_as(*owner):
        tree = HostTree(view)
        try:
            fd, temp = _open_temporary(tree, rel)
            if temp is None and tree.try_lstat(rel) is not None:
                fd = _open_regular(tree, rel, os.O_WRONLY)  # (not truncated: only a check)
            if fd >= 0:
                os.close(fd)
            if temp is not None:
                tree.unlink(temp)
        finally:
            tree.close()


def _put_in_place(view: Path, rel: str, owner: Owner, spooled: int) -> None:
    """Copy the spooled content into a temporary beside the target and rename it over the
    target: all of it is there, or, when this fails, none of it and no temporary. (Without a
    temporary, the content is copied into the target itself, which a failure on the way (a
    full delta) leaves cut short.)"""
    with acting_as(*owner):
        tree = HostTree(view)
        try:
            fd, temp = _open_temporary(tree, rel)
            if temp is None:
                fd = _open_regular(tree, rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                os.lseek(spooled, 0, os.SEEK_SET)
                while data := os.read(spooled, CHUNK):
                    _write_all(fd, data)
                os.close(fd)
                fd = -1
                if temp is not None:
                    tree.rename(temp, rel)
                    temp = None
            finally:
                if fd >= 0:
                    os.close(fd)
                if temp is not None:
                    with contextlib.suppress(OSError):
                        tree.unlink(temp)
        finally:
            tree.close()


def _write_all(fd: int, data: bytes) -> None:
    view_data = memoryview(data)
    while view_data:
        view_data = view_data[os.write(fd, view_data) :]


async def write_file(
    view: Path,
    rel: str,
    chunks: AsyncIterator[bytes],
    *,
    owner: Owner,
    max_bytes: int,
    total_size: int,
    spool_dir: Path,
    commit_lock: anyio.Lock,
) -> tuple[int, str]:
    """Write the file (parents created), as the sandbox could; (size, sha256).

    All or nothing: the content is spooled in the server's ``spool_dir``, outside the view,
    while it comes, and is put in the view only once the stream ended with exactly
    ``total_size`` bytes (0: as many as came), under ``commit_lock`` (the sandbox's commits
    take it too): no commit ever sees a partial write, and a client that stalls holds up no
    commit. A stream broken off, longer or shorter than announced, or refused on the way
    leaves the target as it was.
    """
    if not rel:
        raise InvalidConfigurationError("path must name a file under /workspace")
    if total_size < 0:
        raise InvalidConfigurationError(f"total_size must not be negative, not {total_size}")
    if total_size > max_bytes:
        raise ResourceLimitExceededError(_too_large(rel, max_bytes))
    try:
        async with commit_lock:
            await anyio.to_thread.run_sync(_check_writable, view, rel, owner)
        spooled = os.open(spool_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _error(exc, "write", rel) from None
    digest = hashlib.sha256()
    size = 0
    try:
        async for data in chunks:
            size += len(data)
            if size > max_bytes:
                raise ResourceLimitExceededError(_too_large(rel, max_bytes))
            if total_size and size > total_size:
                raise InvalidConfigurationError(
                    f"{_shown(rel)}: more than the {total_size} bytes total_size announced came"
                )
            digest.update(data)
            try:
                await anyio.to_thread.run_sync(_write_all, spooled, data)
            except OSError as exc:
                said = (
                    f"cannot write {_shown(rel)}: the server could not keep it while it came "
                    f"({exc.strerror}); nothing was written"
                )
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ResourceLimitExceededError(said) from None
                raise SandboxError(said) from None
        if total_size and size != total_size:
            raise InvalidConfigurationError(
                f"{_shown(rel)}: total_size announced {total_size} bytes but {size} came; "
                "the file was left as it was"
            )
        with anyio.CancelScope(shield=True):
            async with commit_lock:
                await anyio.to_thread.run_sync(_put_in_place, view, rel, owner, spooled)
    except OSError as exc:
        raise _error(exc, "write", rel) from None
    finally:
        os.close(spooled)
    return size, digest.hexdigest()


def _too_large(rel: str, max_bytes: int) -> str:
    return f"{_shown(rel)} exceeds the largest file this server accepts ({max_bytes} bytes)"


def list_files(view: Path, rel: str, recursive: bool, owner: Owner, most: int) -> list[SandboxFile]:
    """What the sandbox sees below ``rel``, each directory followed by what it holds (blocking:
    run it in a thread); ResourceLimitExceededError beyond ``most`` entries. Iterative: the
    depth is the sandbox's to choose."""
    found: list[SandboxFile] = []
    with acting_as(*owner):
        tree = HostTree(view)

        def children(directory: str) -> list[str]:
            names = sorted(tree.listdir(directory), reverse=True)  # ENOTDIR when it is none
            return [f"{directory}/{name}" if directory else name for name in names]

        try:
            pending = children(rel)
            while pending:
                child = pending.pop()
                try:
                    st = tree.lstat(child)
                except OSError:
                    continue  # gone meanwhile
                is_dir = stat.S_ISDIR(st.st_mode)
                if len(found) == most:
                    raise too_many_entries(rel, most)
                found.append(
                    SandboxFile(
                        path=child,
                        name=child.rpartition("/")[2],
                        is_dir=is_dir,
                        size=0 if is_dir else st.st_size,
                        modified_at=datetime.fromtimestamp(st.st_mtime, UTC),
                    )
                )
                if recursive and is_dir:
                    pending.extend(children(child))
        except OSError as exc:
            raise _error(exc, "list", rel) from None
        finally:
            tree.close()
    return found
