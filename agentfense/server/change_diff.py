"""A sandbox's changes as a unified diff, in git's format: ``a/`` is the codebase, ``b/`` the
sandbox (blocking: run it in a worker thread).

The sandbox's side is read through its view, with its permissions (a file it cannot read is
said to differ, not shown); the codebase's side from the codebase. Neither follows a symlink.
Text is diffed line by line; a file with a NUL byte in its first 8 KiB is binary, and one
larger than :data:`MAX_FILE_BYTES` on either side is summarised: a line each, never its
content. Directories show only as what their files show. The whole diff stops at
``max_bytes`` (at a line's end), and says it did: the work a request costs is bounded by it
and by the size of the files it reads, never by the size of the codebase.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..fs._host import HostTree
from ..fs._identity import acting_as
from ..fs.control import ChangeEntry

MAX_FILE_BYTES = 1 << 20
DEFAULT_MAX_BYTES = 1 << 20
MOST_MAX_BYTES = 64 << 20
_BINARY_PROBE = 8192
_MODES = {"file": 0o100000, "symlink": 0o120000}


def _git_mode(mode: int) -> int:
    """The mode git shows: a symlink's is 120000 whatever its bits."""
    return 0o120000 if stat.S_ISLNK(mode) else mode


class _Unreadable(Exception):
    """A side whose content the diff does not show, and why."""


def _read(tree: HostTree, rel: str) -> bytes:
    """A file's bytes (a symlink's target), or _Unreadable."""
    st = tree.try_lstat(rel)
    if st is None:
        raise _Unreadable("it is gone")
    if stat.S_ISLNK(st.st_mode):
        return os.fsencode(tree.readlink(rel))
    if not stat.S_ISREG(st.st_mode):
        raise _Unreadable("it is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise _Unreadable(f"{st.st_size} bytes: larger than {MAX_FILE_BYTES} bytes")
    try:
        fd = tree.open(rel, os.O_RDONLY | os.O_NONBLOCK)
    except PermissionError:
        raise _Unreadable("the sandbox's permissions do not let it read it") from None
    try:
        chunks, left = [], MAX_FILE_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_FILE_BYTES:
        raise _Unreadable(f"larger than {MAX_FILE_BYTES} bytes")
    return data


def _one(
    change: ChangeEntry, old: str | None, codebase: HostTree, view: HostTree
) -> Iterator[bytes]:
    """The diff of one path: ``old`` is the codebase's entry's type (None: it has none)."""
    name = os.fsencode(change.path)
    new = None if change.kind == "deleted" else change.type
    if change.kind == "type_changed":  # as git shows it: the old one goes, the new one comes
        gone = ChangeEntry(change.path, "deleted", old or "file", 0, 0)
        made = ChangeEntry(change.path, "added", change.type, change.size, change.mode)
        yield from _one(gone, old, codebase, view)
        yield from _one(made, None, codebase, view)
        return
    if "directory" in (old, new) or "other" in (old, new):
        return
    yield b"diff --git a/%s b/%s\n" % (name, name)
    new_mode = _git_mode(_MODES.get(new or "", 0) | change.mode)
    if old is None:
        yield b"new file mode %o\n" % new_mode
    elif new is None:
        old_st = codebase.try_lstat(change.path)
        yield b"deleted file mode %o\n" % (_git_mode(old_st.st_mode) if old_st else 0o100644)
    else:
        old_st = codebase.try_lstat(change.path)
        if old_st is not None and _git_mode(old_st.st_mode) != new_mode:
            yield b"old mode %o\nnew mode %o\n" % (_git_mode(old_st.st_mode), new_mode)
    a_name = b"a/" + name if old is not None else b"/dev/null"
    b_name = b"b/" + name if new is not None else b"/dev/null"
    try:
        before = _read(codebase, change.path) if old is not None else b""
    except _Unreadable as exc:
        yield b"Files %s and %s differ (%s: %s)\n" % (a_name, b_name, a_name, str(exc).encode())
        return
    try:
        after = _read(view, change.path) if new is not None else b""
    except _Unreadable as exc:
        yield b"Files %s and %s differ (%s: %s)\n" % (a_name, b_name, b_name, str(exc).encode())
        return
    if before == after:
        return  # (a mode change only)
    if b"\0" in before[:_BINARY_PROBE] or b"\0" in after[:_BINARY_PROBE]:
        yield b"Binary files %s and %s differ\n" % (a_name, b_name)
        return
    lines = difflib.diff_bytes(
        difflib.unified_diff,
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        a_name,
        b_name,
    )
    for line in lines:
        yield line if line.endswith(b"\n") else line + b"\n\\ No newline at end of file\n"


def render(
    changes: Sequence[ChangeEntry],
    *,
    codebase_root: Path,
    view_root: Path,
    owner: tuple[int, int],
    max_bytes: int,
) -> tuple[bytes, bool]:
    """The diff of ``changes`` (by path) and whether it stopped at ``max_bytes``."""
    out = bytearray()
    with contextlib.ExitStack() as stack:
        codebase = HostTree(codebase_root)
        stack.callback(codebase.close)
        stack.enter_context(acting_as(*owner))
        view = HostTree(view_root)
        stack.callback(view.close)
        for change in changes:
            old_st = codebase.try_lstat(change.path) if change.kind != "added" else None
            old = None if old_st is None else _type(old_st.st_mode)
            for piece in _one(change, old, codebase, view):
                if len(out) + len(piece) > max_bytes:
                    out += piece[: max_bytes - len(out)]
                    cut = out.rfind(b"\n") + 1
                    del out[cut:]
                    return bytes(out), True
                out += piece
    return bytes(out), False


def _type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    return "other"
