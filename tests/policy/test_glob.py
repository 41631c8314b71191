"""Pattern parsing and matching of permission rules (``agentfense.policy._glob``)."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfense.errors import InvalidConfigurationError
from agentfense.policy import MAX_PATTERN_LENGTH, compile_pattern
from agentfense.types import PatternType, Permission, PermissionRule

GLOB, DIRECTORY, FILE = PatternType.GLOB, PatternType.DIRECTORY, PatternType.FILE


def raw_rule(pattern: object, type: PatternType = GLOB) -> PermissionRule:
    """A rule built without ``PermissionRule``'s own checks (as a buggy caller could)."""
    rule = object.__new__(PermissionRule)
    for name, value in (
        ("pattern", pattern),
        ("permission", Permission.READ),
        ("type", type),
        ("priority", 0),
    ):
        object.__setattr__(rule, name, value)
    return rule


def matches(pattern: str, path: str, type: PatternType = GLOB) -> bool:
    return compile_pattern(PermissionRule(pattern, Permission.READ, type)).matches(path)


GLOB_CASES = [
    # `**` alone: everything, the root included; a leading "/" is ignored.
    ("**", "", True),
    ("**", "a/b/c", True),
    ("/**", "x", True),
    ("/", "", True),
    ("/", "a/b", True),
    # `*` stays within one segment and matches dotfiles; a segment is never empty.
    ("*", "a", True),
    ("*", ".hidden", True),
    ("*", "a/b", False),
    ("*", "", False),
    ("**/*", "", False),
    ("**/*", "a/b", True),
    ("*.py", "a.py", True),
    ("*.py", "src/a.py", False),
    ("src/*.py", "src/a.py", True),
    ("src/*.py", "src/x/a.py", False),
    ("src/*.py", "src/.py", True),
    ("a*b*c", "abc", True),
    ("a*b*c", "axbyc", True),
    ("a*b*c", "axb/c", False),
    # `?` is one character of a segment.
    ("?.txt", "a.txt", True),
    ("?.txt", "ab.txt", False),
    ("a?b", "a/b", False),
    # Character classes.
    ("[ab].txt", "a.txt", True),
    ("[ab].txt", "c.txt", False),
    ("[!ab].txt", "c.txt", True),
    ("[!ab].txt", "a.txt", False),
    ("[^ab].txt", "c.txt", True),
    ("[^ab].txt", "b.txt", False),
    ("[]x]", "]", True),
    ("[]x]", "x", True),
    ("[!]x]", "]", False),
    ("[a-c]", "b", True),
    ("[a-c]", "d", False),
    ("[c-a]", "b", False),
    ("[*]", "*", True),
    ("[*]", "a", False),
    ("x[!a]y", "x/y", False),
    ("x[+-0]y", "x.y", True),
    ("x[+-0]y", "x/y", False),
    # `**` spans zero or more segments.
    ("**/x", "x", True),
    ("**/x", "a/b/x", True),
    ("**/x", "a/x/b", False),
    ("**/x", "ax", False),
    ("dir/**", "dir", True),
    ("dir/**", "dir/a/b", True),
    ("dir/**", "dirx", False),
    ("dir/**", "", False),
    ("dir/**", "a/dir/b", False),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "ab", False),
    ("a/**/b", "a/xb", False),
    ("**/**/x", "x", True),
    ("**/secrets/**", "secrets", True),
    ("**/secrets/**", "x/secrets/y/z", True),
    ("**/secrets/**", "x/secrets.txt", False),
    ("**/.env*", ".env", True),
    ("**/.env*", "a/b/.env.local", True),
    ("/output/**", "output/r.txt", True),
    ("/output/**", "src/output/r.txt", False),
    # A `**` inside a segment is an ordinary `*`.
    ("a**b", "axyb", True),
    ("a**b", "ax/yb", False),
    # A trailing "/" means the directory and everything below it.
    ("docs/", "docs", True),
    ("docs/", "docs/a/b", True),
    ("docs/", "docsx", False),
    # No escape character; names may hold any character but "/" and NUL.
    ("a\\b", "a\\b", True),
    ("*.txt", "a\nb.txt", True),
    ("a b/*", "a b/c", True),
    ("A*", "a", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), GLOB_CASES)
def test_glob_matching(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


DIRECTORY_CASES = [
    ("/docs/", "docs", True),
    ("/docs/", "docs/a/b", True),
    ("docs", "docs/x", True),
    ("docs", "docsx", False),
    ("docs", "src/docs", False),
    ("docs", "", False),
    ("/", "", True),
    ("/", "a/b", True),
    ("a/*", "a/*/x", True),  # literal: no wildcards in directory patterns
    ("a/*", "a/b", False),
    ("a/[b", "a/[b/c", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), DIRECTORY_CASES)
def test_directory_matching(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path, DIRECTORY) is expected


FILE_CASES = [
    ("a/b.txt", "a/b.txt", True),
    ("/a/b.txt", "a/b.txt", True),
    ("a/b.txt", "a/b.txt/c", False),
    ("a/b.txt", "a", False),
    ("a", "a/b", False),
    ("*.py", "x.py", False),  # literal
    ("*.py", "*.py", True),
    ("/", "", True),  # the root itself
    ("/", "a", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), FILE_CASES)
def test_file_matching(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path, FILE) is expected


INVALID = [
    ("a/[b", GLOB, "unbalanced '[' in glob"),
    ("a[/]b", GLOB, "unbalanced '[' in glob"),
    ("[]", GLOB, "unbalanced '[' in glob"),
    ("a//b", GLOB, "empty segment"),
    ("//a", DIRECTORY, "empty segment"),
    ("a//", GLOB, "empty segment"),
    ("//", GLOB, "empty segment"),
    ("a/../b", GLOB, "'..' segment"),
    ("./a", FILE, "'.' segment"),
    ("a/.", DIRECTORY, "'.' segment"),
    ("x" * (MAX_PATTERN_LENGTH + 1), GLOB, "longer than 4096"),
    ("/docs/**", DIRECTORY, "'**' segment in a directory pattern"),
    ("**/a.txt", FILE, "'**' segment in a file pattern"),
]


@pytest.mark.parametrize(("pattern", "type", "reason"), INVALID)
def test_invalid_patterns_are_rejected(pattern: str, type: PatternType, reason: str) -> None:
    with pytest.raises(InvalidConfigurationError) as info:
        compile_pattern(PermissionRule(pattern, Permission.READ, type))
    assert str(info.value).startswith(repr(pattern)[:20])
    assert reason in str(info.value)


@pytest.mark.parametrize("pattern", ["", "   ", "a\x00b", 7])
def test_blank_nul_and_non_string_patterns_are_rejected(pattern: object) -> None:
    with pytest.raises(InvalidConfigurationError):
        compile_pattern(raw_rule(pattern))


def test_longest_allowed_pattern_compiles() -> None:
    pattern = "/".join(["a*"] * (MAX_PATTERN_LENGTH // 3))
    assert len(pattern) <= MAX_PATTERN_LENGTH
    assert compile_pattern(PermissionRule(pattern)).matches("/".join(["ab"] * (4096 // 3)))


def test_pathological_star_pattern_is_fast() -> None:
    # Exponential backtracking would take minutes here.
    compiled = compile_pattern(PermissionRule("*a*a*a*a*a*a*a*a*a*a*b"))
    assert not compiled.matches("a" * 200)


def specificity(pattern: str, type: PatternType = GLOB) -> tuple[int, ...]:
    return compile_pattern(PermissionRule(pattern, Permission.READ, type)).specificity


def test_specificity_definition() -> None:
    assert specificity("src/*.py") == (1, 6, 2, 0)
    assert specificity("**") == (0, 0, 0, -1)
    assert specificity("/docs", DIRECTORY) == specificity("docs/**")


@pytest.mark.parametrize(
    ("more", "less"),
    [
        ("**/secrets/**", "**"),
        ("/output/**", "**"),
        ("**/*.key", "**"),
        ("src/*.py", "**/*.py"),
        ("*", "**"),
        ("a/b/**", "a/**"),
        ("**/.git/**", "**/*"),
    ],
)
def test_specificity_order(more: str, less: str) -> None:
    assert specificity(more) > specificity(less)


# --- a deliberately simple, slow reference matcher --------------------------------------------


def _oracle_segment(segment: str) -> str | None:
    """``segment`` as an fnmatch pattern (``[^`` becomes ``[!``); None if a ``[`` is unbalanced."""
    out: list[str] = []
    i = 0
    while i < len(segment):
        if segment[i] != "[":
            out.append(segment[i])
            i += 1
            continue
        j = i + 1
        negate = segment[j : j + 1] in ("!", "^")
        j += negate
        if segment[j : j + 1] == "]":
            j += 1
        end = segment.find("]", j)
        if end < 0:
            return None
        body = segment[i + 1 : end]
        out.append("[" + ("!" + body[1:] if negate else body) + "]")
        i = end + 1
    return "".join(out)


def _oracle_segments(pattern: str, type: PatternType) -> list[str] | None:
    """The pattern's segments for the oracle (``**`` kept), or None when it is invalid."""
    if "//" in pattern:
        return None
    body = pattern[1:] if pattern.startswith("/") else pattern
    trailing = pattern.endswith("/")
    if body.endswith("/"):
        body = body[:-1]
    segments = body.split("/") if body else []
    if any(s in ("", ".", "..") for s in segments):
        return None
    if type is not GLOB and "**" in segments:
        return None
    if type is FILE:
        return segments
    if type is DIRECTORY:
        return [*segments, "**"]
    converted = []
    for segment in segments:
        if segment == "**":
            converted.append(segment)
            continue
        as_fnmatch = _oracle_segment(segment)
        if as_fnmatch is None:
            return None
        converted.append(as_fnmatch)
    return [*converted, "**"] if trailing else converted


def _oracle_match(segments: list[str], names: list[str], literal: bool) -> bool:
    if not segments:
        return not names
    if segments[0] == "**" and not literal:
        return _oracle_match(segments[1:], names, literal) or (
            bool(names) and _oracle_match(segments, names[1:], literal)
        )
    if not names:
        return False
    head = names[0] == segments[0] if literal else fnmatch.fnmatchcase(names[0], segments[0])
    return head and _oracle_match(segments[1:], names[1:], literal)


def oracle(pattern: str, type: PatternType, path: str) -> bool | None:
    segments = _oracle_segments(pattern, type)
    if segments is None:
        return None
    names = path.split("/") if path else []
    if type is DIRECTORY:
        return names[: len(segments) - 1] == segments[:-1]
    return _oracle_match(segments, names, literal=type is FILE)


segment_text = st.text(alphabet="ab.*?[]!^-", min_size=1, max_size=5)
pattern_segments = st.one_of(
    st.just("**"),
    st.sampled_from(["a", "b", "*", "?", "a*", "*b", "[ab]", "[!a]", "[^b]*", "[]a]", "[.-b]"]),
    segment_text,
)
patterns = st.builds(
    lambda lead, segments, trail: lead + "/".join(segments) + trail,
    st.sampled_from(["", "/"]),
    st.lists(pattern_segments, min_size=1, max_size=4),
    st.sampled_from(["", "", "/"]),
).filter(lambda p: p.strip() != "")
names = st.text(alphabet="ab.-]^!*", min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))
paths = st.lists(names, max_size=5).map("/".join)


@settings(max_examples=600, deadline=None)
@given(patterns, st.sampled_from(list(PatternType)), st.lists(paths, min_size=1, max_size=6))
def test_matches_agrees_with_reference_oracle(
    pattern: str, type: PatternType, candidates: list[str]
) -> None:
    expected_valid = _oracle_segments(pattern, type) is not None
    try:
        compiled = compile_pattern(PermissionRule(pattern, Permission.READ, type))
    except InvalidConfigurationError:
        assert not expected_valid
        return
    assert expected_valid
    # Also try paths built from the pattern's own literal text, which match more often.
    own = pattern.strip("/").replace("**", "a").replace("*", "b").replace("?", "c")
    for path in [*candidates, own, "", "a"]:
        if "//" in path or any(n in (".", "..") for n in path.split("/")) or path.startswith("/"):
            continue
        assert compiled.matches(path) is oracle(pattern, type, path), path


@pytest.mark.parametrize(
    ("pattern", "type", "example"),
    [
        ("**/*.key", GLOB, "x.key"),
        ("output/**", GLOB, "output"),
        ("**", GLOB, ""),
        ("/.env.example", GLOB, ".env.example"),
        ("**/.[eE][nN][vV]*", GLOB, ".envx"),
        ("a/[!x]?/b", GLOB, "a/ax/b"),
        ("docs", DIRECTORY, "docs"),
        ("a/*.py", FILE, "a/*.py"),
    ],
)
def test_the_example_path_of_a_pattern_is_one_it_matches(
    pattern: str, type: PatternType, example: str
) -> None:
    compiled = compile_pattern(PermissionRule(pattern, Permission.READ, type))
    assert compiled.example() == example
    assert compiled.matches(example)


def test_a_pattern_of_an_empty_class_has_no_example() -> None:
    assert compile_pattern(PermissionRule("a[]]", Permission.READ)).example() == "a]"
    assert compile_pattern(PermissionRule("a[b-a]", Permission.READ)).example() is None


def test_compiled_patterns_are_kept_boundedly() -> None:
    """Patterns recur from sandbox to sandbox and are compiled once, but a client sending
    ever new ones (or long ones) grows the cache no further than its bound."""
    from agentfense.policy import _glob

    first = compile_pattern(PermissionRule("src/**/*.py"))
    assert compile_pattern(PermissionRule("src/**/*.py")) is first
    for index in range(_glob._CACHED_PATTERNS + 50):
        compile_pattern(PermissionRule(f"gen/{index}/**"))
    assert _glob._compile_cached.cache_info().currsize == _glob._CACHED_PATTERNS
    long = "a" * (_glob.CACHED_PATTERN_LENGTH + 1) + "/*.key"
    assert compile_pattern(PermissionRule(long)) is not compile_pattern(PermissionRule(long))
    assert compile_pattern(PermissionRule(long)).matches("a" * 257 + "/x.key")
    for _ in range(2):  # an invalid pattern is refused each time, never kept
        with pytest.raises(InvalidConfigurationError, match="empty segment"):
            compile_pattern(PermissionRule("a//b"))
