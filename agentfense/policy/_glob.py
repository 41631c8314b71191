"""Parsing and compiling permission-rule patterns (pure: no I/O).

A pattern is a path from the workspace root, made of ``/``-separated segments. Its grammar:

* One leading ``/`` is optional and ignored (``/docs/**`` is ``docs/**``).
* A trailing ``/`` means "this and everything below": ``docs/`` is ``docs/**`` for a glob and
  just ``docs`` for a directory (where it is implied anyway); a file pattern ignores it.
  So the glob or directory ``/`` covers everything, and the file ``/`` names the root itself.
* Empty segments (``a//b``, or ``//a``), ``.`` and ``..`` segments, NUL, blank patterns,
  patterns longer than :data:`MAX_PATTERN_LENGTH` or with more than :data:`MAX_GLOBSTARS`
  ``**`` are rejected, never normalized away: a
  rule that does not say what it looks like it says is a configuration error, and a rule
  must not cost more than a bounded amount per path it is matched against.

Glob segments (type ``glob`` only; ``file`` and ``directory`` patterns are literal paths, in
which a ``**`` segment is rejected as a sure mistake):

* ``*`` matches any run of characters within one segment (never ``/``), including a leading
  ``.``: unlike a shell, ``*`` and ``**`` match dotfiles.
* ``?`` matches one character within a segment.
* ``[...]`` matches one character of a class within a segment: ranges ``a-z``, negation
  ``[!...]`` or ``[^...]``, a ``]`` first in the class is literal (``[]x]``). A class never
  matches ``/``. A ``[`` without its ``]`` in the same segment is an error.
* ``**`` as a whole segment matches zero or more segments: ``**`` matches every path including
  the root ``""``, ``dir/**`` also matches ``dir``, ``**/x`` matches ``x`` at every depth.
  A ``**`` inside a segment (``a**b``) is an ordinary ``*``; runs of ``**`` segments collapse.
* There is no escape character (``\\`` is literal; a literal ``*`` is ``[*]``). Matching is
  case-sensitive.

A path is relative to the workspace root, POSIX and normalized: ``""`` is the root,
``"a/b.txt"`` a file.

Matching runs segment by segment over the pattern's positions (an NFA, as in
:mod:`agentfense.policy._matcher`), never as one regular expression over the whole path: a
pattern such as ``**/a/**/a/**/a/**/b`` against ``a/a/.../a/c`` costs time linear in the
path, where a backtracking regex costs time exponential in the number of ``**``. Within one
segment, a glob is a regex whose stars cannot backtrack (see :func:`_glob_segment`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from ..errors import InvalidConfigurationError
from ..types import PatternType, PermissionRule

MAX_PATTERN_LENGTH = 4096
MAX_GLOBSTARS = 16

_STAR = "[^/]*"
_ANY_CHAR = "[^/]"
_WHOLE_SEGMENT = "[^/]+"  # a lone `*`: any name, but a segment is never empty
_match_any = re.compile(_WHOLE_SEGMENT, re.DOTALL).fullmatch


class PatternError(ValueError):
    """Why a pattern is invalid (a sentence without the pattern itself)."""


class Specificity(NamedTuple):
    """How specific a pattern is; compared as a tuple, larger is more specific.

    * ``literal_segments``: segments without any wildcard (``src`` in ``src/*.py``);
    * ``literal_chars``: characters matched literally, outside ``*``, ``?``, ``[...]`` and
      ``/`` (``src/*.py`` has 6);
    * ``fixed_segments``: segments other than ``**`` (each matches exactly one path segment);
    * ``negated_globstars``: minus the number of ``**`` segments (fewer is more specific).

    So ``**/secrets/**``, ``/output/**`` and ``**/*.key`` are more specific than ``**``, and
    ``src/*.py`` than ``**/*.py``. A ``directory`` pattern ``d`` counts as the glob ``d/**``.
    """

    literal_segments: int
    literal_chars: int
    fixed_segments: int
    negated_globstars: int


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment of a compiled pattern."""

    source: str
    is_globstar: bool = False
    is_literal: bool = True
    is_star: bool = False
    """True when the segment matches every segment name (``*``)."""
    literal_chars: int = 0
    regex: str = ""
    """A wildcard segment's regular expression (for ``fullmatch``, DOTALL), else ""."""
    _fullmatch: Callable[[str], re.Match[str] | None] | None = field(
        default=None, compare=False, repr=False
    )

    def matches(self, name: str) -> bool:
        """Whether this (non-``**``) segment matches the path segment ``name``."""
        if self._fullmatch is None:
            return name == self.source
        return self._fullmatch(name) is not None


GLOBSTAR = Segment("**", is_globstar=True, is_literal=False)


@dataclass(frozen=True, slots=True)
class CompiledPattern:
    """A rule's pattern, compiled once: ``matches(path)`` and its :class:`Specificity`."""

    pattern: str
    type: PatternType
    segments: tuple[Segment, ...]
    specificity: Specificity

    def matches(self, path: str) -> bool:
        """Whether the pattern covers ``path`` (relative, normalized; ``""`` is the root)."""
        return match_segments(self.segments, path.split("/") if path else [])

    def example(self) -> str | None:
        """A path the pattern matches, its wildcards taken as plainly as they allow: ``**``
        as no segment, ``*`` and ``?`` as ``x``, a class as one of its members. So
        ``**/*.key`` gives ``x.key``, ``output/**`` gives ``output``, ``**`` the root ``""``.
        None in the rare case that this path is not matched (a class of no usable member)."""
        names = [
            segment.source if segment.is_literal else _example_name(segment.source)
            for segment in self.segments
            if not segment.is_globstar
        ]
        path = "/".join(names)
        return path if self.matches(path) else None


def match_segments(segments: tuple[Segment, ...], names: list[str]) -> bool:
    """Whether ``segments`` match the path made of ``names``: the set of positions reached
    after each name, so time is O(len(names) * len(segments))."""
    end = len(segments)
    positions = _skip_globstars(segments, {0})
    for name in names:
        following: set[int] = set()
        for position in positions:
            if position == end:
                continue
            segment = segments[position]
            if segment.is_globstar:
                following.add(position)
            elif segment.matches(name):
                following.add(position + 1)
        if not following:
            return False
        positions = _skip_globstars(segments, following)
    return end in positions


def _skip_globstars(segments: tuple[Segment, ...], positions: set[int]) -> set[int]:
    """``positions`` and every position after a ``**`` there (which may match nothing)."""
    for position in list(positions):
        if position < len(segments) and segments[position].is_globstar:
            positions.add(position + 1)
    return positions


def _class_end(segment: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``start``, or -1."""
    j = start + 1
    if j < len(segment) and segment[j] in "!^":
        j += 1
    if j < len(segment) and segment[j] == "]":
        j += 1
    return segment.find("]", j)


def _class_regex(body: str) -> str:
    """The regex of the class ``[body]`` (``body`` without the brackets)."""
    negate = body[:1] in ("!", "^")
    if negate:
        body = body[1:]
    ranges: list[tuple[str, str]] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            low, high = body[k], body[k + 2]
            k += 3
            if low <= high:  # a reversed range is empty, as in fnmatch
                ranges.append((low, high))
        else:
            ranges.append((body[k], body[k]))
            k += 1
    items = "".join(
        re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}"
        for low, high in ranges
    )
    if negate:
        return f"[^/{items}]"
    if not items:
        return "(?!)"
    if any(low <= "/" <= high for low, high in ranges):
        return f"(?!/)[{items}]"
    return f"[{items}]"


def _example_name(source: str) -> str:
    """A name the glob segment ``source`` is meant to match (see ``CompiledPattern.example``)."""
    chars: list[str] = []
    i = 0
    while i < len(source):
        if source[i] in "*?":
            chars.append("x")
            i += 1
        elif source[i] == "[":
            end = _class_end(source, i)
            body = source[i + 1 : end]
            member = re.compile(_class_regex(body), re.DOTALL).fullmatch
            chars.append(next((c for c in f"xa0_{body}" if member(c)), "x"))
            i = end + 1
        else:
            chars.append(source[i])
            i += 1
    return "".join(chars)


def _glob_segment(source: str) -> Segment:
    """Compile one glob segment (not ``**``)."""
    tokens: list[str | None] = []  # None stands for `*`
    literal_chars = 0
    i = 0
    while i < len(source):
        char = source[i]
        if char == "*":
            if not tokens or tokens[-1] is not None:
                tokens.append(None)
            i += 1
        elif char == "?":
            tokens.append(_ANY_CHAR)
            i += 1
        elif char == "[":
            end = _class_end(source, i)
            if end < 0:
                raise PatternError("unbalanced '[' in glob")
            tokens.append(_class_regex(source[i + 1 : end]))
            i = end + 1
        else:
            tokens.append(re.escape(char))
            literal_chars += 1
            i += 1
    if len(tokens) == literal_chars:  # no wildcard at all
        return Segment(source, literal_chars=literal_chars)
    if tokens == [None]:
        return Segment(source, is_literal=False, is_star=True, _fullmatch=_match_any)
    # As fnmatch does: an interior `*fixed` takes the first occurrence of `fixed` in an atomic
    # group, so patterns such as `*a*a*a*b` cannot backtrack exponentially.
    parts: list[str] = []
    k = 0
    while k < len(tokens) and tokens[k] is not None:
        parts.append(tokens[k] or "")
        k += 1
    while k < len(tokens):
        k += 1  # the star
        fixed: list[str] = []
        while k < len(tokens) and tokens[k] is not None:
            fixed.append(tokens[k] or "")
            k += 1
        if k == len(tokens):
            parts.append(_STAR + "".join(fixed))
        else:
            parts.append(f"(?>{_STAR}?{''.join(fixed)})")
    regex = "".join(parts)
    return Segment(
        source,
        is_literal=False,
        literal_chars=literal_chars,
        regex=regex,
        _fullmatch=re.compile(regex, re.DOTALL).fullmatch,
    )


def _literal_segment(source: str) -> Segment:
    return Segment(source, literal_chars=len(source))


def parse_pattern(pattern: str, type: PatternType) -> tuple[Segment, ...]:
    """The segments of ``pattern``; :class:`PatternError` when it is invalid."""
    if not isinstance(pattern, str):
        raise PatternError(f"pattern must be a string, not {pattern.__class__.__name__}")
    if not pattern.strip():
        raise PatternError("empty pattern")
    if "\x00" in pattern:
        raise PatternError("NUL in pattern")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"pattern longer than {MAX_PATTERN_LENGTH} characters")
    if "//" in pattern:
        raise PatternError("empty segment ('//') in pattern")
    trailing_slash = pattern.endswith("/")
    body = pattern.strip("/")  # at most one "/" each side: there is no "//"
    names = body.split("/") if body else []
    for name in names:
        if name in (".", ".."):
            raise PatternError(f"{name!r} segment in pattern")
    if names.count("**") > MAX_GLOBSTARS:
        raise PatternError(f"more than {MAX_GLOBSTARS} '**' segments in pattern")
    if type is not PatternType.GLOB and "**" in names:
        # Surely meant as a glob; taken literally a `none` rule would hide nothing.
        raise PatternError(
            f"'**' segment in a {type.value} pattern (literal); use a glob rule, or a "
            "directory rule without '**' for a directory and everything below it"
        )
    if type is PatternType.FILE:
        return tuple(_literal_segment(name) for name in names)
    if type is PatternType.DIRECTORY:
        return (*(_literal_segment(name) for name in names), GLOBSTAR)
    segments: list[Segment] = []
    for name in names:
        if name == "**":
            if not segments or segments[-1] is not GLOBSTAR:
                segments.append(GLOBSTAR)
        else:
            segments.append(_glob_segment(name))
    if trailing_slash and (not segments or segments[-1] is not GLOBSTAR):
        segments.append(GLOBSTAR)
    return tuple(segments)


def specificity(segments: tuple[Segment, ...]) -> Specificity:
    """The :class:`Specificity` of a parsed pattern."""
    globstars = sum(1 for s in segments if s.is_globstar)
    return Specificity(
        literal_segments=sum(1 for s in segments if s.is_literal),
        literal_chars=sum(s.literal_chars for s in segments),
        fixed_segments=len(segments) - globstars,
        negated_globstars=-globstars,
    )


# Patterns recur (every sandbox of a preset compiles the same ones, in the server and in the
# fs process): the short ones are compiled once. Bounded in count and in each one's length, so
# a client's patterns cost at most a few MiB here however many it sends.
CACHED_PATTERN_LENGTH = 256
_CACHED_PATTERNS = 1024


def compile_segments(pattern: str, type: PatternType) -> CompiledPattern:
    """Compile ``pattern``; :class:`PatternError` when it is invalid."""
    if isinstance(pattern, str) and len(pattern) <= CACHED_PATTERN_LENGTH:
        return _compile_cached(pattern, type)
    return _compile(pattern, type)


def _compile(pattern: str, type: PatternType) -> CompiledPattern:
    segments = parse_pattern(pattern, type)
    return CompiledPattern(pattern, type, segments, specificity(segments))


_compile_cached = lru_cache(maxsize=_CACHED_PATTERNS)(_compile)  # (errors are not kept)


def compile_pattern(rule: PermissionRule) -> CompiledPattern:
    """Compile ``rule``'s pattern; ``InvalidConfigurationError`` when it is invalid."""
    try:
        return compile_segments(rule.pattern, PatternType(rule.type))
    except (PatternError, ValueError) as exc:
        raise InvalidConfigurationError(f"{rule.pattern!r}: {exc}") from None
