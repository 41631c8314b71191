"""A sandbox's changes as a unified diff, in git's format: ``a/`` is the codebase, ``b/`` the
sandbox (blocking: run it in a worker thread).

The sandbox's side is read through its view, with its permissions (a file it cannot read is
said to differ, not shown); the codebase's side from the codebase. Neither follows a symlink.
Text is diffed line by line; a file with a NUL byte in its first 8 KiB is binary, and one
larger than :data:`MAX_FILE_BYTES` on either side is summarised: a line each, never its
content. Directories show only as what their files show. The whole diff stops at
``max_bytes`` (at a line's end), and says it did; a request reads at most
:data:`READ_BUDGET` bytes of files (one file of several names is read once per name: 20,000
names of one file of 1 MiB made a diff read 20 GB for a minute), and summarises the files
beyond. So the work a request costs is bounded, never by the size of the codebase. Line
matching costs up to the product of the two sides' changed lines (what lies between their
common first and last lines): a request matches up to :data:`MATCH_BUDGET` of it, and
summarises a file beyond.
A file the diff cannot read (a directory on the way the sandbox made unreadable, say) is
summarised too. Names are quoted as git quotes them: one holding a newline never forges a
line of the diff.

A diff of the most bytes costs the server about three times them in memory, and a core: so
requests take turns (:class:`DiffTurns`), :data:`DIFFS_AT_ONCE` on the server and one per
sandbox at a time (20 at once grew the server by 3.8 GB, and held another sandbox's command
for 8 s).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import stat
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import anyio

from ..fs._host import HostTree
from ..fs._identity import acting_as
from ..fs.control import ChangeEntry

MAX_FILE_BYTES = 1 << 20
# Pairs of changed lines a request's line matching may consider (difflib's cost, quadratic in
# them: a second or so of a core for the whole request, whatever the sandbox wrote).
MATCH_BUDGET = 10_000_000
READ_BUDGET = 256 << 20  # bytes of files a request reads (a second or so, through a view)
_CONTEXT = 3  # lines of context around each hunk (git's and difflib's)
DEFAULT_MAX_BYTES = 1 << 20
MOST_MAX_BYTES = 64 << 20
_BINARY_PROBE = 8192
DIFFS_AT_ONCE = 2
_MODES = {"file": 0o100000, "symlink": 0o120000}


class DiffTurns:
    """Diffs take turns: :data:`DIFFS_AT_ONCE` on the server, one per sandbox."""

    def __init__(self) -> None:
        self._server = anyio.CapacityLimiter(DIFFS_AT_ONCE)
        self._sandboxes: dict[str, tuple[anyio.Lock, int]] = {}  # id: its lock, its waiters

    @contextlib.asynccontextmanager
    async def turn(self, sandbox_id: str) -> AsyncIterator[None]:
        lock, users = self._sandboxes.get(sandbox_id, (None, 0))
        if lock is None:
            lock = anyio.Lock()
        self._sandboxes[sandbox_id] = (lock, users + 1)
        try:
            async with lock, self._server:
                yield
        finally:
            lock, users = self._sandboxes[sandbox_id]
            if users == 1:
                del self._sandboxes[sandbox_id]
            else:
                self._sandboxes[sandbox_id] = (lock, users - 1)


def _git_mode(mode: int) -> int:
    """The mode git shows: a symlink's is 120000 whatever its bits."""
    return 0o120000 if stat.S_ISLNK(mode) else mode


class _Unreadable(Exception):
    """A side whose content the diff does not show, and why."""


class _Budget:
    """What is left of a request's line matching (:data:`MATCH_BUDGET`), and of the bytes
    it may read (:data:`READ_BUDGET`)."""

    def __init__(self, pairs: int, read: int) -> None:
        self.left = pairs
        self.read_left = read


_ESCAPES = {7: b"\\a", 8: b"\\b", 9: b"\\t", 10: b"\\n", 11: b"\\v", 12: b"\\f", 13: b"\\r"}
_ESCAPES |= {ord('"'): b'\\"', ord("\\"): b"\\\\"}


def _quoted(name: bytes) -> bytes:
    """``name`` as git shows it (``core.quotePath``): in double quotes, with C escapes, when
    it holds a control character, a quote, a backslash or a byte beyond ASCII."""
    if all(0x20 <= byte < 0x7F and byte not in (0x22, 0x5C) for byte in name):
        return name
    out = bytearray(b'"')
    for byte in name:
        escape = _ESCAPES.get(byte)
        if escape is not None:
            out += escape
        elif 0x20 <= byte < 0x7F:
            out.append(byte)
        else:
            out += b"\\%03o" % byte
    out += b'"'
    return bytes(out)


def _stat(tree: HostTree, rel: str) -> os.stat_result | None:
    """``rel``'s attributes; None when gone, or when they cannot be read."""
    try:
        return tree.try_lstat(rel)
    except OSError:
        return None


def _read(tree: HostTree, rel: str, budget: _Budget) -> bytes:
    """A file's bytes (a symlink's target), or _Unreadable."""
    try:
        return _read_file(tree, rel, budget)
    except PermissionError:
        raise _Unreadable("the sandbox's permissions do not let it read it") from None
    except OSError as exc:  # (changed while read, say)
        raise _Unreadable(f"it cannot be read: {exc.strerror or exc}") from None


def _read_file(tree: HostTree, rel: str, budget: _Budget) -> bytes:
    st = tree.try_lstat(rel)
    if st is None:
        raise _Unreadable("it is gone")
    if stat.S_ISLNK(st.st_mode):
        return os.fsencode(tree.readlink(rel))
    if not stat.S_ISREG(st.st_mode):
        raise _Unreadable("it is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise _Unreadable(f"{st.st_size} bytes: larger than {MAX_FILE_BYTES} bytes")
    if st.st_size > budget.read_left:
        raise _Unreadable(f"not shown: this diff read its most, {READ_BUDGET >> 20} MiB")
    budget.read_left -= st.st_size
    fd = tree.open(rel, os.O_RDONLY | os.O_NONBLOCK)
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
    change: ChangeEntry, old: str | None, codebase: HostTree, view: HostTree, budget: _Budget
) -> Iterator[bytes]:
    """The diff of one path: ``old`` is the codebase's entry's type (None: it has none)."""
    name = os.fsencode(change.path)
    new = None if change.kind == "deleted" else change.type
    if change.kind == "type_changed":  # as git shows it: the old one goes, the new one comes
        gone = ChangeEntry(change.path, "deleted", old or "file", 0, 0)
        made = ChangeEntry(change.path, "added", change.type, change.size, change.mode)
        yield from _one(gone, old, codebase, view, budget)
        yield from _one(made, None, codebase, view, budget)
        return
    if "directory" in (old, new) or "other" in (old, new):
        return
    yield b"diff --git %s %s\n" % (_quoted(b"a/" + name), _quoted(b"b/" + name))
    new_mode = _git_mode(_MODES.get(new or "", 0) | change.mode)
    if old is None:
        yield b"new file mode %o\n" % new_mode
    elif new is None:
        old_st = _stat(codebase, change.path)
        yield b"deleted file mode %o\n" % (_git_mode(old_st.st_mode) if old_st else 0o100644)
    else:
        old_st = _stat(codebase, change.path)
        if old_st is not None and _git_mode(old_st.st_mode) != new_mode:
            yield b"old mode %o\nnew mode %o\n" % (_git_mode(old_st.st_mode), new_mode)
    a_name = _quoted(b"a/" + name) if old is not None else b"/dev/null"
    b_name = _quoted(b"b/" + name) if new is not None else b"/dev/null"
    try:
        before = _read(codebase, change.path, budget) if old is not None else b""
    except _Unreadable as exc:
        yield b"Files %s and %s differ (%s: %s)\n" % (a_name, b_name, a_name, str(exc).encode())
        return
    try:
        after = _read(view, change.path, budget) if new is not None else b""
    except _Unreadable as exc:
        yield b"Files %s and %s differ (%s: %s)\n" % (a_name, b_name, b_name, str(exc).encode())
        return
    if before == after:
        return  # (a mode change only)
    if b"\0" in before[:_BINARY_PROBE] or b"\0" in after[:_BINARY_PROBE]:
        yield b"Binary files %s and %s differ\n" % (a_name, b_name)
        return
    lines = _hunks(_lines(before), _lines(after), a_name, b_name, budget)
    if lines is None:
        yield b"Files %s and %s differ (too many changed lines to diff)\n" % (a_name, b_name)
        return
    for line in lines:
        yield line if line.endswith(b"\n") else line + b"\n\\ No newline at end of file\n"


def _lines(data: bytes) -> list[bytes]:
    """``data``'s lines, each with its newline (the last one may have none): split at newlines
    only, as git splits them (``bytes.splitlines`` would split at a carriage return too)."""
    lines = data.split(b"\n")
    last = lines.pop()
    kept = [line + b"\n" for line in lines]
    if last:
        kept.append(last)
    return kept


def _hunks(
    before: list[bytes], after: list[bytes], a_name: bytes, b_name: bytes, budget: _Budget
) -> Iterator[bytes] | None:
    """The unified diff of two files' lines; None when matching them would cost more than
    the budget left. Only what lies between their common first and last lines is matched
    (with the context around it), the hunks' line numbers counted from the files' start."""
    shortest = min(len(before), len(after))
    head = 0
    while head < shortest and before[head] == after[head]:
        head += 1
    tail = 0
    while tail < shortest - head and before[-1 - tail] == after[-1 - tail]:
        tail += 1
    cost = (len(before) - head - tail) * (len(after) - head - tail)
    if cost > budget.left:
        return None
    budget.left -= cost
    start = head - min(head, _CONTEXT)
    cut = tail - min(tail, _CONTEXT)
    lines = difflib.diff_bytes(
        difflib.unified_diff,
        before[start : len(before) - cut],
        after[start : len(after) - cut],
        a_name,
        b_name,
        n=_CONTEXT,
    )
    return _renumbered(lines, start)


def _renumbered(lines: Iterator[bytes], offset: int) -> Iterator[bytes]:
    """The hunks' headers (``@@ -1,2 +1,3 @@``) with ``offset`` added to where they start."""
    for line in lines:
        if offset and line.startswith(b"@@ -"):
            old, new = line[3:].split(b" ", 2)[:2]
            line = b"@@ %s %s @@\n" % (_moved(old, offset), _moved(new, offset))
        yield line


def _moved(span: bytes, offset: int) -> bytes:
    sign, start, comma, length = span[:1], *span[1:].partition(b",")
    return b"%s%d%s%s" % (sign, int(start) + offset, comma, length)


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
    budget = _Budget(MATCH_BUDGET, READ_BUDGET)
    with contextlib.ExitStack() as stack:
        codebase = HostTree(codebase_root)
        stack.callback(codebase.close)
        stack.enter_context(acting_as(*owner))
        view = HostTree(view_root)
        stack.callback(view.close)
        for change in changes:
            old = None
            if change.kind != "added":
                try:
                    old_st = codebase.try_lstat(change.path)
                except OSError:  # (a directory on the way the sandbox cannot search)
                    old = "file"  # (shown as one the diff cannot read)
                else:
                    old = None if old_st is None else _type(old_st.st_mode)
            for piece in _one(change, old, codebase, view, budget):
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
