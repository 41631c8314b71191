"""Gitignore-semantics matching of project paths, with no third-party dependency and no I/O.

:class:`IgnoreRules` holds the patterns of one ignore file (or one list of patterns) together
with the directory they apply to, and answers the questions git answers: does the last matching
pattern exclude this path, and is the path excluded once its parent directories are taken into
account. The semantics follow git's ``dir.c`` and ``wildmatch.c`` byte for byte, including the
corner cases: trailing spaces are trimmed unless escaped with ``\\``, a trailing ``\\`` or an
unterminated ``[`` makes a pattern match nothing, ``**`` is special only as a whole path
component, and the literal prefix of an anchored pattern counts as a component boundary for
``**`` (so ``ab**/c`` matches ``abc`` and ``abx/y/c``, as in git).

Matching works on the UTF-8 bytes of the path (file names that are not valid UTF-8 travel as
surrogate escapes), exactly as git does, so ``?`` matches one byte. Each rule set is compiled
into at most four regular expressions, built once; a query runs two of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "IgnorePattern",
    "IgnoreRules",
    "first_verdict",
    "split_pattern_text",
]

#: Patterns skipped by default when a local project is uploaded to a sandbox: version-control
#: metadata, virtual environments, dependency directories and tool caches. Build outputs such
#: as ``dist/`` and ``build/`` are deliberately *not* listed: a sandbox may need them.
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = (
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    "*.py[cod]",
    ".venv/",
    "venv/",
    "node_modules/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".hypothesis/",
    ".tox/",
    ".nox/",
    "*.egg-info/",
    ".ipynb_checkpoints/",
    ".DS_Store",
    "Thumbs.db",
)

_STAR, _QUESTION, _LBRACKET, _BACKSLASH, _SLASH = (ord(c) for c in "*?[\\/")
_SPECIAL = frozenset((_STAR, _QUESTION, _LBRACKET, _BACKSLASH))

# git's own ctype tables (ASCII only; bytes >= 0x80 belong to no class).
_POSIX_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": frozenset(c for c in range(128) if chr(c).isalnum()),
    b"alpha": frozenset(c for c in range(128) if chr(c).isalpha()),
    b"blank": frozenset(b" \t"),
    b"cntrl": frozenset([*range(32), 127]),
    b"digit": frozenset(b"0123456789"),
    b"graph": frozenset(range(33, 127)),
    b"lower": frozenset(range(ord("a"), ord("z") + 1)),
    b"print": frozenset(range(32, 127)),
    b"punct": frozenset(c for c in range(33, 127) if not chr(c).isalnum()),
    b"space": frozenset(b" \t\n\r"),
    b"upper": frozenset(range(ord("A"), ord("Z") + 1)),
    b"xdigit": frozenset(b"0123456789abcdefABCDEF"),
}


def split_pattern_text(text: str) -> list[str]:
    """The lines of an ignore file's text, as git splits them (on ``\\n`` only, BOM dropped)."""
    return text.removeprefix("\ufeff").split("\n")


@dataclass(frozen=True, slots=True)
class IgnorePattern:
    """One parsed pattern line. ``anchored`` patterns match the whole path below the base."""

    text: str
    negated: bool
    dir_only: bool
    anchored: bool


@dataclass(frozen=True, slots=True)
class _Compiled:
    pattern: IgnorePattern
    regex: bytes | None  # None: the pattern can never match anything


def _trim_trailing_spaces(line: str) -> str:
    last_space: int | None = None
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch == " ":
            if last_space is None:
                last_space = i
        elif ch == "\\":
            i += 1
            if i >= n:
                return line
            last_space = None
        else:
            last_space = None
        i += 1
    return line if last_space is None else line[:last_space]


def _parse_class(pat: bytes, i: int) -> tuple[frozenset[int], int] | None:
    """The bytes matched by the ``[...]`` class at ``pat[i]`` and the index after it."""
    n = len(pat)
    p = i + 1
    negated = p < n and pat[p] in b"!^"
    if negated:
        p += 1
    if p >= n:
        return None
    matched: set[int] = set()
    prev_ch = 0
    p_ch = pat[p]
    while True:
        if p_ch == _BACKSLASH:
            p += 1
            if p >= n:
                return None
            p_ch = pat[p]
            matched.add(p_ch)
        elif p_ch == ord("-") and prev_ch and p + 1 < n and pat[p + 1] != ord("]"):
            p += 1
            p_ch = pat[p]
            if p_ch == _BACKSLASH:
                p += 1
                if p >= n:
                    return None
                p_ch = pat[p]
            matched.update(range(prev_ch, p_ch + 1))
            p_ch = 0
        elif p_ch == _LBRACKET and p + 1 < n and pat[p + 1] == ord(":"):
            start = q = p + 2
            while q < n and pat[q] != ord("]"):
                q += 1
            if q >= n:
                return None
            if q - start - 1 < 0 or pat[q - 1] != ord(":"):
                matched.add(_LBRACKET)  # no ":]": the "[" is an ordinary member
            else:
                members = _POSIX_CLASSES.get(pat[start : q - 1])
                if members is None:
                    return None  # git aborts the whole match on an unknown class
                matched.update(members)
                p, p_ch = q, 0
        else:
            matched.add(p_ch)
        prev_ch = p_ch
        p += 1
        if p >= n:
            return None
        p_ch = pat[p]
        if p_ch == ord("]"):
            break
    result = frozenset(range(256)) - matched if negated else frozenset(matched)
    return result - {_SLASH}, p + 1


def _class_regex(members: frozenset[int]) -> bytes:
    parts: list[bytes] = []
    values = sorted(members)
    k = 0
    while k < len(values):
        lo = hi = values[k]
        while k + 1 < len(values) and values[k + 1] == hi + 1:
            k += 1
            hi = values[k]
        parts.append(b"\\x%02x" % lo if lo == hi else b"\\x%02x-\\x%02x" % (lo, hi))
        k += 1
    return b"[" + b"".join(parts) + b"]"


def _translate(pat: bytes, start: int) -> bytes | None:
    """A regex for git's ``wildmatch(pat, path, WM_PATHNAME)``; None if nothing can match.

    ``start`` is where git's matcher begins (after the literal prefix of an anchored pattern):
    a ``**`` there counts as following a ``/``.
    """
    out: list[bytes] = [re.escape(pat[:start])]
    i, n = start, len(pat)
    while i < n:
        c = pat[i]
        if c == _STAR:
            j = i
            while j < n and pat[j] == _STAR:
                j += 1
            whole = i == start or pat[i - 1] == _SLASH
            if j - i >= 2 and whole and j == n:
                out.append(b".*")
            elif j - i >= 2 and whole and pat[j] == _SLASH:
                out.append(b"(?:.*/)?")
                j += 1
            elif j - i >= 2 and whole and pat[j : j + 2] == b"\\/":
                out.append(b".*")
            else:
                out.append(b"[^/]*")
            i = j
        elif c == _QUESTION:
            out.append(b"[^/]")
            i += 1
        elif c == _LBRACKET:
            parsed = _parse_class(pat, i)
            if parsed is None or not parsed[0]:
                return None
            out.append(_class_regex(parsed[0]))
            i = parsed[1]
        elif c == _BACKSLASH:
            if i + 1 >= n:
                return None
            out.append(re.escape(pat[i + 1 : i + 2]))
            i += 2
        else:
            out.append(re.escape(pat[i : i + 1]))
            i += 1
    return b"".join(out)


def _as_bytes(text: str) -> bytes:
    """A name or pattern as the bytes it stands for: the undecodable bytes of a file name
    come back as they were (surrogateescape); any other lone surrogate, which no file name
    holds, as its own UTF-8-like bytes, so that it matches only itself."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _compile_line(line: str) -> _Compiled | None:
    """Parse one line of an ignore file; None for blank lines and comments."""
    line = line.removesuffix("\n").removesuffix("\r")
    if not line or line.startswith("#"):
        return None
    line = _trim_trailing_spaces(line)
    body = line
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    dir_only = body.endswith("/")
    if dir_only:
        body = body[:-1]
    if not body:
        return None
    anchored = "/" in body
    raw = _as_bytes(body)
    if anchored:
        raw = raw.removeprefix(b"/")
        start = next((k for k, b in enumerate(raw) if b in _SPECIAL), len(raw))
    else:
        start = 0
    pattern = IgnorePattern(text=line, negated=negated, dir_only=dir_only, anchored=anchored)
    return _Compiled(pattern, _translate(raw, start))


def _combine(items: list[tuple[int, bytes]]) -> re.Pattern[bytes] | None:
    """One regex trying the patterns from the last to the first: the first alternative that
    matches the whole subject is the last matching pattern, reported by ``lastindex``."""
    if not items:
        return None
    alternatives = b"|".join(b"(" + rx + b")" for _, rx in reversed(items))
    return re.compile(alternatives, re.DOTALL)


class IgnoreRules:
    """The patterns of one ignore file, applying to the subtree at ``base``.

    ``base`` is the directory holding the file, as a relative POSIX path ("" for the project
    root). Paths given to the methods are relative to the project root, never to ``base``.
    """

    __slots__ = ("_base", "_base_prefix", "_order", "_patterns", "_regexes")

    def __init__(self, lines: Iterable[str], base: str = "") -> None:
        self._base = base.strip("/") if base not in ("", ".") else ""
        self._base_prefix = self._base + "/" if self._base else ""
        compiled = [c for line in lines for part in line.split("\n") if (c := _compile_line(part))]
        self._patterns = tuple(c.pattern for c in compiled)
        # (basename?, include dir-only patterns?) -> combined regex; lastindex -> pattern index.
        self._regexes: dict[tuple[bool, bool], re.Pattern[bytes] | None] = {}
        self._order: dict[tuple[bool, bool], list[int]] = {}
        for basename in (True, False):
            for with_dirs in (True, False):
                items = [
                    (k, c.regex)
                    for k, c in enumerate(compiled)
                    if c.regex is not None
                    and c.pattern.anchored is not basename
                    and (with_dirs or not c.pattern.dir_only)
                ]
                self._regexes[basename, with_dirs] = _combine(items)
                self._order[basename, with_dirs] = [k for k, _ in reversed(items)]

    @classmethod
    def from_text(cls, text: str, base: str = "") -> IgnoreRules:
        """Rules from the whole text of an ignore file."""
        return cls(split_pattern_text(text), base)

    @property
    def base(self) -> str:
        return self._base

    @property
    def patterns(self) -> tuple[IgnorePattern, ...]:
        return self._patterns

    def __len__(self) -> int:
        return len(self._patterns)

    def __repr__(self) -> str:
        return f"IgnoreRules(base={self._base!r}, patterns={len(self._patterns)})"

    def last_match(self, rel_path: str, is_dir: bool) -> IgnorePattern | None:
        """The last pattern matching ``rel_path`` itself (parents not considered), if any."""
        rel_path = rel_path.strip("/")
        if not rel_path or not rel_path.startswith(self._base_prefix):
            return None
        subject = _as_bytes(rel_path[len(self._base_prefix) :])
        best = -1
        for basename in (True, False):
            regex = self._regexes[basename, is_dir]
            if regex is None:
                continue
            text = subject.rpartition(b"/")[2] if basename else subject
            found = regex.fullmatch(text)
            if found is not None and found.lastindex is not None:
                best = max(best, self._order[basename, is_dir][found.lastindex - 1])
        return self._patterns[best] if best >= 0 else None

    def match(self, rel_path: str, is_dir: bool) -> bool | None:
        """True if the last matching pattern excludes ``rel_path``, False if it re-includes it
        (``!``), None if no pattern matches. Parent directories are not considered."""
        found = self.last_match(rel_path, is_dir)
        return None if found is None else not found.negated

    def is_ignored(self, rel_path: str, is_dir: bool) -> bool:
        """Whether git would ignore ``rel_path`` under these rules alone: a path inside an
        excluded directory stays excluded whatever negation matches it."""
        parts = rel_path.strip("/").split("/")
        for depth in range(1, len(parts)):
            if self.match("/".join(parts[:depth]), True):
                return True
        return bool(self.match(rel_path, is_dir))


def first_verdict(rule_sets: Iterable[IgnoreRules], rel_path: str, is_dir: bool) -> bool | None:
    """The verdict of the first rule set (highest precedence first) with a matching pattern."""
    for rules in rule_sets:
        verdict = rules.match(rel_path, is_dir)
        if verdict is not None:
            return verdict
    return None
