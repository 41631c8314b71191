"""A codebase's tree on disk, reached without following links: the blocking helpers the
store runs in worker threads, and the records and errors they produce."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import re
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from ..errors import (
    CodebaseNotFoundError,
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SandboxError,
    StatusCode,
)
from ..fs import codebase_lock
from ..fs._host import openat2

_ID_RE = re.compile(r"cb_[0-9a-f]{16}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One entry of a codebase tree; ``path`` is relative to the codebase root."""

    path: str
    name: str
    is_dir: bool
    size: int
    modified_at: datetime


def _shown_id(codebase_id: str) -> str:
    return codebase_id if _ID_RE.fullmatch(codebase_id) else repr(codebase_id[:64])


def _not_found(codebase_id: str) -> CodebaseNotFoundError:
    return CodebaseNotFoundError(f"codebase {_shown_id(codebase_id)} not found")


def _file_not_found(path: str, codebase_id: str) -> SandboxError:
    return SandboxError(
        f"file {path} not found in codebase {codebase_id}", code=StatusCode.NOT_FOUND
    )


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


# --- blocking helpers (run in a worker thread) -----------------------------------------------


def _open_root(files_dir: Path, codebase_id: str) -> int:
    try:
        return os.open(files_dir, _DIR_FLAGS)
    except FileNotFoundError:
        raise _not_found(codebase_id) from None


def _not_a_dir(field: str, prefix: str) -> InvalidConfigurationError:
    return InvalidConfigurationError(
        f"{field} goes through {prefix!r}, which is a file or a symbolic link, not a directory"
    )


def _open_parent(
    files_dir: Path,
    codebase_id: str,
    parts: builtins.list[str],
    *,
    create: bool,
    field: str,
    made: builtins.list[str] | None = None,
) -> int | None:
    """An fd of the directory ``parts`` in the tree, opened without following links.

    Missing directories are created when ``create`` (and named in ``made``), else the
    result is ``None``.
    """
    fd = _open_root(files_dir, codebase_id)
    try:
        for index, part in enumerate(parts):
            try:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        return None
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    else:
                        if made is not None:
                            made.append("/".join(parts[: index + 1]))
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _not_a_dir(field, "/".join(parts[: index + 1])) from None
                raise
            fd, child = child, fd
            os.close(child)
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _check_upload_target(files_dir: Path, codebase_id: str, parts: builtins.list[str]) -> int:
    """Refuse a target that is a directory, or under a file or link; how many entries an
    upload to it adds (the file, unless it replaces one, and each directory it makes)."""
    path = "/".join(parts)
    fd = _open_root(files_dir, codebase_id)
    try:
        for index, part in enumerate(parts[:-1]):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return len(parts) - index  # (this directory, those below it, the file)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _not_a_dir("file_path", "/".join(parts[: index + 1])) from None
                raise
            fd, child = child, fd
            os.close(child)
        st = _lstat_at(fd, parts[-1])
    finally:
        os.close(fd)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InvalidConfigurationError(f"file_path {path!r} is a directory")
    return 0 if st is not None else 1


def _create_temp(path: Path, executable: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    mode = 0o755 if executable else 0o644
    fd = os.open(path, flags, mode)
    os.fchmod(fd, mode)  # whatever the umask
    return fd


def _write_all(fd: int, data: bytes | bytearray, digest: Any) -> None:
    digest.update(data)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _commit_upload(
    temp: Path, files_dir: Path, codebase_id: str, parts: builtins.list[str]
) -> tuple[int, int, int]:
    """Put the upload in place (the caller holds the codebase's lock: a commit checks what
    the codebase holds, then renames, and an upload between the two would be overwritten
    unreported); how the tree changed: bytes of its regular files, entries, regular files."""
    path = "/".join(parts)
    made: builtins.list[str] = []
    parent = _open_parent(
        files_dir, codebase_id, parts[:-1], create=True, field="file_path", made=made
    )
    assert parent is not None
    try:
        before = _lstat_at(parent, parts[-1])
        size = os.stat(temp).st_size
        # rename() replaces a symlink itself, never the file it points to.
        os.replace(temp, parts[-1], dst_dir_fd=parent)
    except IsADirectoryError:
        raise InvalidConfigurationError(f"file_path {path!r} is a directory") from None
    finally:
        os.close(parent)
    if before is None:
        return size, len(made) + 1, 1
    if stat.S_ISREG(before.st_mode):
        return size - before.st_size, 0, 0
    return size, 0, 1  # (it replaced a link, or another kind of entry)


@contextlib.asynccontextmanager
async def holding_codebase(files_dir: Path, codebase_id: str) -> AsyncIterator[None]:
    """Hold the codebase's lock (``fs/codebase_lock.py``), waiting for it on the event loop."""
    pause = 0.005
    while True:
        try:
            fd = codebase_lock.try_writing(files_dir)
        except FileNotFoundError:  # (the codebase was deleted meanwhile)
            raise _not_found(codebase_id) from None
        if fd is not None:
            break
        await anyio.sleep(pause)
        pause = min(pause * 2, 0.05)
    try:
        yield
    finally:
        os.close(fd)


def _discard_temp(fd: int, temp: Path) -> None:
    if fd >= 0:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)


def _open_for_read(files_dir: Path, codebase_id: str, parts: builtins.list[str]) -> int:
    path = "/".join(parts)
    parent = _open_parent(files_dir, codebase_id, parts[:-1], create=False, field="file_path")
    if parent is None:
        raise _file_not_found(path, codebase_id)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(parts[-1], flags, dir_fd=parent)
    except FileNotFoundError:
        raise _file_not_found(path, codebase_id) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InvalidConfigurationError(
                f"file_path {path!r} is a symbolic link; the server does not follow links"
            ) from None
        if err.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket (or device) there
            raise InvalidConfigurationError(f"file_path {path!r} is not a regular file") from None
        raise
    finally:
        os.close(parent)
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise InvalidConfigurationError(f"file_path {path!r} is a directory, not a file")
    raise InvalidConfigurationError(f"file_path {path!r} is not a regular file")


def _scan(dir_fd: int) -> builtins.list[tuple[str, os.stat_result]]:
    entries: builtins.list[tuple[str, os.stat_result]] = []
    with os.scandir(dir_fd) as it:
        for entry in it:
            try:
                entries.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
    return entries


def _walk(top_fd: int, top_rel: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(path, name, lstat)`` of everything below ``top_fd``; links are never followed.

    Iterative and holding one directory open at a time: a tree as deep as a sandbox could
    make it costs neither stack nor descriptors (each directory is opened by its path
    beneath ``top_fd``, through no symlink)."""
    pending = [""]
    while pending:
        rel = pending.pop()
        try:
            fd = top_fd if not rel else openat2(top_fd, rel, _DIR_FLAGS)
        except OSError as err:  # replaced or removed since the scan
            if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                continue
            raise
        try:
            entries = _scan(fd)
        finally:
            if fd != top_fd:
                os.close(fd)
        directories = []
        for name, st in entries:
            inner = f"{rel}/{name}" if rel else name
            yield (f"{top_rel}/{inner}" if top_rel else inner), name, st
            if stat.S_ISDIR(st.st_mode):
                directories.append(inner)
        pending.extend(reversed(directories))


def _file_record(path: str, name: str, st: os.stat_result) -> FileRecord:
    is_dir = stat.S_ISDIR(st.st_mode)
    return FileRecord(
        path=path,
        name=name,
        is_dir=is_dir,
        size=0 if is_dir else st.st_size,
        modified_at=_utc(st.st_mtime),
    )


def too_many_entries(rel: str, most: int) -> ResourceLimitExceededError:
    where = f"/{rel}" if rel else "the root"
    return ResourceLimitExceededError(
        f"the listing of {where} has more than {most} entries, the most one listing returns "
        "(max_list_entries); list a directory further down, or without recursive"
    )


def _list_files(
    files_dir: Path, codebase_id: str, rel: str, recursive: bool, most: int
) -> builtins.list[FileRecord]:
    parts = rel.split("/") if rel else []
    parent = _open_parent(files_dir, codebase_id, parts[:-1], create=False, field="path")
    if parent is None:
        raise _file_not_found(rel, codebase_id)
    top = parent
    try:
        if parts:
            st = _lstat_at(parent, parts[-1])
            if st is None:
                raise _file_not_found(rel, codebase_id)
            if not stat.S_ISDIR(st.st_mode):
                return [_file_record(rel, parts[-1], st)]
            try:
                top = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            except OSError as err:  # replaced since the lstat
                if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise _file_not_found(rel, codebase_id) from None
                raise
        records: builtins.list[FileRecord] = []
        if recursive:
            for p, n, st in _walk(top, rel):
                if len(records) == most:
                    raise too_many_entries(rel, most)
                records.append(_file_record(p, n, st))
        else:
            entries = _scan(top)
            if len(entries) > most:
                raise too_many_entries(rel, most)
            records = [_file_record(f"{rel}/{n}" if rel else n, n, st) for n, st in entries]
    finally:
        os.close(parent)
        if top != parent:
            os.close(top)
    records.sort(key=lambda r: r.path)
    return records


def _stats(files_dir: Path, codebase_id: str) -> tuple[int, int, int]:
    """The bytes and the number of the tree's regular files, and its number of entries."""
    root = _open_root(files_dir, codebase_id)
    size = count = entries = 0
    try:
        for _, _, st in _walk(root, ""):
            entries += 1
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
                count += 1
    finally:
        os.close(root)
    return size, count, entries
