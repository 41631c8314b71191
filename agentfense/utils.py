"""Choosing the files of a local project to upload into a sandbox.

``scan_project`` walks a directory once and sorts every entry into one of three outcomes:
uploaded (``ProjectFile``), ignored (counted), or skipped with a reason
(``SkippedEntry``: symbolic links, sockets, FIFOs, devices, unreadable entries, names that
are not valid UTF-8). Nothing is dropped silently. ``iter_project_files`` and
``walk_directory`` are built on it.

Which paths are ignored follows gitignore semantics (see ``agentfense._ignore``). Sources,
from the highest precedence to the lowest, as in git (where command-line ``--exclude`` patterns
beat ``.gitignore`` files, which beat ``core.excludesFile``):

1. ``ignore_patterns`` given by the caller, relative to the project root;
2. ``.gitignore`` and ``.sandboxignore`` files found in any directory, each applying to its own
   subtree, a deeper file overriding a shallower one; within one directory ``.sandboxignore`` is
   read after ``.gitignore``, so it can re-include (``!``) what ``.gitignore`` excludes;
3. ``DEFAULT_IGNORE_PATTERNS`` when ``use_defaults`` is true.

Within one source the last matching pattern wins. Ignored directories are never entered, so
nothing inside one can be re-included, exactly as in git.
"""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agentfense._ignore import (
    DEFAULT_IGNORE_PATTERNS,
    IgnoreRules,
    first_verdict,
    split_pattern_text,
)
from agentfense.errors import InvalidConfigurationError

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "IGNORE_FILE_NAMES",
    "ProjectFile",
    "ProjectScan",
    "SkippedEntry",
    "iter_project_files",
    "scan_project",
    "walk_directory",
]

#: Per-directory ignore files, in the order they are read (later ones take precedence).
IGNORE_FILE_NAMES: tuple[str, ...] = (".gitignore", ".sandboxignore")


@dataclass(frozen=True, slots=True)
class ProjectFile:
    """A regular file to upload. ``rel_path`` is relative to the project root, POSIX style."""

    rel_path: str
    abs_path: pathlib.Path
    size: int


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """An entry that is not ignored but cannot be uploaded, and why."""

    rel_path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProjectScan:
    """The outcome of ``scan_project``. ``files`` and ``skipped`` are sorted by
    ``rel_path``; ``ignored_count`` counts ignored entries, an ignored directory as one."""

    files: tuple[ProjectFile, ...]
    skipped: tuple[SkippedEntry, ...]
    ignored_count: int

    @property
    def total_size(self) -> int:
        """The size of the files to upload, in bytes."""
        return sum(f.size for f in self.files)


_SPECIAL_KINDS: tuple[tuple[int, str], ...] = (
    (stat.S_IFSOCK, "is a socket"),
    (stat.S_IFIFO, "is a named pipe (FIFO)"),
    (stat.S_IFCHR, "is a character device"),
    (stat.S_IFBLK, "is a block device"),
)


def _kind_reason(mode: int) -> str:
    kind = stat.S_IFMT(mode)
    for value, reason in _SPECIAL_KINDS:
        if kind == value:
            return f"{reason}; only regular files are uploaded"
    return "is not a regular file; only regular files are uploaded"


def _os_reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _user_rules(ignore_patterns: Sequence[str] | None) -> IgnoreRules | None:
    if ignore_patterns is None:
        return None
    if isinstance(ignore_patterns, str | bytes):
        raise InvalidConfigurationError(
            "ignore_patterns must be a sequence of pattern strings, not a single string"
        )
    patterns = list(ignore_patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise InvalidConfigurationError(
                f"ignore_patterns must contain strings, got {type(pattern).__name__}"
            )
    return IgnoreRules(patterns) if patterns else None


def _resolve_root(path: str | os.PathLike[str]) -> pathlib.Path:
    root = pathlib.Path(os.path.abspath(os.fspath(path)))
    try:
        st = root.stat()
    except FileNotFoundError:
        raise InvalidConfigurationError(f"project path {str(root)!r} does not exist") from None
    except OSError as err:
        raise InvalidConfigurationError(
            f"project path {str(root)!r} cannot be accessed: {_os_reason(err)}"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidConfigurationError(f"project path {str(root)!r} is not a directory")
    return root


class _Scanner:
    def __init__(
        self,
        root: pathlib.Path,
        user: IgnoreRules | None,
        defaults: IgnoreRules | None,
        follow_symlinks: bool,
    ) -> None:
        self.root = root
        self.user = user
        self.defaults = defaults
        self.follow = follow_symlinks
        self.files: list[ProjectFile] = []
        self.skipped: list[SkippedEntry] = []
        self.ignored = 0

    def ignored_path(self, stack: tuple[IgnoreRules, ...], rel: str, is_dir: bool) -> bool:
        sets = [r for r in (self.user, *stack, self.defaults) if r is not None]
        if first_verdict(sets, rel, is_dir):
            self.ignored += 1
            return True
        return False

    def skip(self, rel: str, reason: str) -> None:
        self.skipped.append(SkippedEntry(rel, reason))

    def read_rules(self, entries: dict[str, os.DirEntry[str]], rel_dir: str) -> IgnoreRules | None:
        lines: list[str] = []
        for name in IGNORE_FILE_NAMES:
            entry = entries.get(name)
            if entry is None or not entry.is_file(follow_symlinks=self.follow):
                continue  # a symbolic link is reported as such, and not read (like git)
            try:
                with open(entry.path, "rb") as handle:
                    data = handle.read()
            except OSError:
                continue  # reported as unreadable when the entry itself is examined
            lines.extend(split_pattern_text(data.decode("utf-8", "surrogateescape")))
        rules = IgnoreRules(lines, rel_dir)
        return rules if len(rules) else None

    def scan(self) -> ProjectScan:
        root_id = self.root.stat()
        # (absolute dir, relative dir, rule sets deepest first, (dev, inode) of ancestors)
        pending: list[tuple[str, str, tuple[IgnoreRules, ...], frozenset[tuple[int, int]]]] = [
            (str(self.root), "", (), frozenset({(root_id.st_dev, root_id.st_ino)}))
        ]
        while pending:
            abs_dir, rel_dir, stack, ancestors = pending.pop()
            try:
                with os.scandir(abs_dir) as it:
                    entries = {entry.name: entry for entry in it}
            except OSError as err:
                if not rel_dir:
                    raise InvalidConfigurationError(
                        f"project path {str(self.root)!r} cannot be read: {_os_reason(err)}"
                    ) from None
                self.skip(rel_dir, f"directory could not be read: {_os_reason(err)}")
                continue
            rules = self.read_rules(entries, rel_dir)
            if rules is not None:
                stack = (rules, *stack)
            for name in sorted(entries, reverse=True):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                child = self.examine(entries[name], rel, stack, ancestors)
                if child is not None:
                    pending.append((entries[name].path, rel, stack, ancestors | {child}))
        return ProjectScan(
            files=tuple(sorted(self.files, key=lambda f: f.rel_path)),
            skipped=tuple(sorted(self.skipped, key=lambda s: s.rel_path)),
            ignored_count=self.ignored,
        )

    def examine(
        self,
        entry: os.DirEntry[str],
        rel: str,
        stack: tuple[IgnoreRules, ...],
        ancestors: frozenset[tuple[int, int]],
    ) -> tuple[int, int] | None:
        """Sort one entry; for a directory to enter, return its (dev, inode)."""
        try:
            lst = entry.stat(follow_symlinks=False)
        except OSError as err:
            if not self.ignored_path(stack, rel, False):
                self.skip(rel, f"could not be examined: {_os_reason(err)}")
            return None
        st = lst
        if stat.S_ISLNK(lst.st_mode):
            if not self.follow:
                if not self.ignored_path(stack, rel, False):
                    self.skip(rel, "is a symbolic link; symbolic links are not followed")
                return None
            try:
                st = os.stat(entry.path)
            except OSError:
                if not self.ignored_path(stack, rel, False):
                    self.skip(rel, "is a broken symbolic link")
                return None
        is_dir = stat.S_ISDIR(st.st_mode)
        if self.ignored_path(stack, rel, is_dir):
            return None
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            self.skip(rel, "name is not valid UTF-8 and cannot be sent to the sandbox")
            return None
        if is_dir:
            ident = (st.st_dev, st.st_ino)
            if ident in ancestors:
                self.skip(rel, "is a symbolic link to a directory containing it; not followed")
                return None
            return ident
        if not stat.S_ISREG(st.st_mode):
            self.skip(rel, _kind_reason(st.st_mode))
        elif not os.access(entry.path, os.R_OK):
            self.skip(rel, "file is not readable: permission denied")
        else:
            self.files.append(ProjectFile(rel, pathlib.Path(entry.path), st.st_size))
        return None


def scan_project(
    path: str | os.PathLike[str],
    ignore_patterns: Sequence[str] | None = None,
    *,
    use_defaults: bool = True,
    follow_symlinks: bool = False,
) -> ProjectScan:
    """Decide which files of the project at ``path`` to upload, without reading them.

    ``ignore_patterns`` are gitignore patterns relative to the project root; they take
    precedence over ignore files found in the tree, which take precedence over
    ``DEFAULT_IGNORE_PATTERNS`` (used only if ``use_defaults``). With ``follow_symlinks``,
    symbolic links are followed (also to outside the project), except a link to a directory
    that contains it; broken links are then skipped.

    Raises ``InvalidConfigurationError`` if ``path`` does not exist, is not a directory or
    cannot be read, or if ``ignore_patterns`` is not a sequence of strings.
    """
    user = _user_rules(ignore_patterns)
    root = _resolve_root(path)
    defaults = IgnoreRules(DEFAULT_IGNORE_PATTERNS) if use_defaults else None
    return _Scanner(root, user, defaults, follow_symlinks).scan()


def iter_project_files(
    path: str | os.PathLike[str],
    ignore_patterns: Sequence[str] | None = None,
    *,
    use_defaults: bool = True,
    follow_symlinks: bool = False,
) -> Iterator[ProjectFile]:
    """The files to upload, sorted by ``rel_path``, without reading their content.

    The project is scanned (and errors raised) when this function is called, not lazily.
    Skipped entries are not reported here: use ``scan_project`` to see them.
    """
    scan = scan_project(
        path, ignore_patterns, use_defaults=use_defaults, follow_symlinks=follow_symlinks
    )
    return iter(scan.files)


def walk_directory(
    path: str | os.PathLike[str],
    ignore_patterns: Sequence[str] | None = None,
    *,
    use_defaults: bool = True,
    follow_symlinks: bool = False,
) -> Iterator[tuple[str, bytes]]:
    """``(relative POSIX path, content)`` of each file to upload, sorted by path.

    The project is scanned (and errors raised) when this function is called; each file is read
    only when the iterator reaches it, and an ``OSError`` while reading (a file removed
    meanwhile, say) propagates. Prefer ``iter_project_files`` for large files.
    """
    files = iter_project_files(
        path, ignore_patterns, use_defaults=use_defaults, follow_symlinks=follow_symlinks
    )
    return ((f.rel_path, f.abs_path.read_bytes()) for f in files)
