"""Tests of the gitignore matcher: example tables, Hypothesis properties, and a differential
test against ``git check-ignore --no-index`` on generated trees."""

from __future__ import annotations

import fnmatch
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentfense._ignore import DEFAULT_IGNORE_PATTERNS, IgnoreRules, first_verdict
from agentfense.utils import scan_project

# (patterns, path, is_dir, expected is_ignored)
EXAMPLES: list[tuple[list[str], str, bool, bool]] = [
    (["*.log"], "a.log", False, True),
    (["*.log"], "deep/er/a.log", False, True),
    (["*.log"], "a.log.txt", False, False),
    (["*.log", "!keep.log"], "keep.log", False, False),
    (["!keep.log", "*.log"], "keep.log", False, True),
    (["build/"], "build", True, True),
    (["build/"], "build", False, False),
    (["build/"], "src/build", True, True),
    (["build/"], "build/x.c", False, True),
    (["build/", "!build/keep"], "build/keep", False, True),  # parent excluded: no re-include
    (["build/*", "!build/keep"], "build/keep", False, False),
    (["/top"], "top", False, True),
    (["/top"], "sub/top", False, False),
    (["doc/*.txt"], "doc/a.txt", False, True),
    (["doc/*.txt"], "doc/x/a.txt", False, False),
    (["doc/*.txt"], "x/doc/a.txt", False, False),
    (["**/foo"], "foo", False, True),
    (["**/foo"], "a/b/foo", False, True),
    (["**/foo/bar"], "x/foo/bar", False, True),
    (["abc/**"], "abc/x/y", False, True),
    (["abc/**"], "abc", True, False),
    (["a/**/b"], "a/b", False, True),
    (["a/**/b"], "a/x/y/b", False, True),
    (["a/**/b"], "a/xb", False, False),
    (["a**b"], "axxb", False, True),
    (["x/a**b"], "x/a/b", False, False),
    (["ab**/c"], "abc", False, True),  # git quirk: the literal prefix acts as a boundary
    (["ab**/c"], "abx/y/c", False, True),
    (["*"], "anything/at/all", False, True),
    (["?.txt"], "a.txt", False, True),
    (["?.txt"], "ab.txt", False, False),
    (["?.txt"], "\u00e9.txt", False, False),  # ? is one byte, as in git
    (["[abc].c"], "b.c", False, True),
    (["[!abc].c"], "b.c", False, False),
    (["[^abc].c"], "d.c", False, True),
    (["[a-c]x"], "bx", False, True),
    (["[c-a]x"], "bx", False, False),
    (["[]]"], "]", False, True),
    (["[[:digit:]]x"], "7x", False, True),
    (["[[:bogus:]]x"], "bx", False, False),
    (["[abc"], "[abc", False, False),  # unterminated class matches nothing
    (["foo\\"], "foo", False, False),  # trailing backslash matches nothing
    (["\\#x"], "#x", False, True),
    (["#x"], "#x", False, False),
    (["\\!x"], "!x", False, True),
    (["!x"], "x", False, False),
    (["\\*"], "*", False, True),
    (["\\*"], "a", False, False),
    (["foo   "], "foo", False, True),
    (["foo\\ "], "foo ", False, True),
    (["foo\\ "], "foo", False, False),
    (["foo\t"], "foo", False, False),
    (["foo\r"], "foo", False, True),
    (["", "   ", "# c"], "x", False, False),
    (["a b"], "a b", False, True),
]


@pytest.mark.parametrize(("patterns", "path", "is_dir", "expected"), EXAMPLES)
def test_examples(patterns: list[str], path: str, is_dir: bool, expected: bool) -> None:
    assert IgnoreRules(patterns).is_ignored(path, is_dir) is expected


def test_base_directory() -> None:
    rules = IgnoreRules(["/x", "y", "z/w"], base="sub")
    assert rules.base == "sub"
    assert rules.match("sub/x", False) is True
    assert rules.match("sub/deeper/x", False) is None
    assert rules.match("x", False) is None
    assert rules.match("y", False) is None
    assert rules.match("subway/y", False) is None
    assert rules.match("sub/q/y", False) is True
    assert rules.match("sub/z/w", False) is True


def test_text_and_introspection() -> None:
    rules = IgnoreRules.from_text("\ufeff# comment\n*.o\r\n!keep.o  \n\nlib/\n")
    assert [p.text for p in rules.patterns] == ["*.o", "!keep.o", "lib/"]
    assert len(rules) == 3
    found = rules.last_match("keep.o", False)
    assert found is not None
    assert found.negated
    assert rules.match("x\u000bo", False) is None  # only "\n" splits lines
    assert first_verdict([IgnoreRules(["!a"]), IgnoreRules(["a"])], "a", False) is False
    assert first_verdict([IgnoreRules(["b"]), IgnoreRules(["a"])], "a", False) is True
    assert first_verdict([], "a", False) is None
    assert "patterns=3" in repr(rules)


def test_defaults() -> None:
    rules = IgnoreRules(DEFAULT_IGNORE_PATTERNS)
    for path in (".git", "node_modules", "a/__pycache__", ".venv", "pkg.egg-info"):
        assert rules.is_ignored(path, True), path
    for path in ("x.pyc", ".DS_Store", "a/.mypy_cache/x"):
        assert rules.is_ignored(path, False), path
    for path in ("dist", "build", "src", ".github", ".env"):
        assert not rules.is_ignored(path, True), path


NAME = st.sampled_from(["a", "b", "ab", "ba", "a.txt", "b.log", ".h", "x y", "#c", "!d", "é"])
PIECES = ["a", "b", "ab", "*", "?", "**", "*.txt", "a*", "*b", "[ab]", "[!a]*", "b?", ".h"]
PIECES += ["x y", "\\#c", "#c", "!d", "\\!d", "a\\*", "[a-c]", "[[:alpha:]]*", "é", "?.log"]
PIECE = st.sampled_from([*PIECES, "***"])
SEGMENT = st.lists(PIECE, min_size=1, max_size=2).map("".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    body = "/".join(draw(st.lists(SEGMENT, min_size=1, max_size=3)))
    if draw(st.booleans()):
        body = "/" + body
    if draw(st.integers(0, 3)) == 0:
        body += "/"
    if draw(st.integers(0, 4)) == 0:
        body = "!" + body
    return body + draw(st.sampled_from(["", "", "", " ", "  ", "\\ "]))


PATTERN_LISTS = st.lists(patterns(), min_size=1, max_size=6)


def test_wildcards_agree_with_fnmatch_on_names() -> None:
    @given(st.text("ab.*?", min_size=1, max_size=6), st.text("ab.", min_size=1, max_size=6))
    def check(pattern: str, name: str) -> None:
        assert (IgnoreRules([pattern]).match(name, False) is True) == fnmatch.fnmatchcase(
            name, pattern
        )

    check()


@given(st.text(st.characters(exclude_characters="/\n\r\x00"), min_size=1, max_size=8))
@example("\udd00")  # a lone surrogate that surrogateescape cannot encode
@example("\udcff")  # one that it can (an undecodable byte of a file name)
def test_escaped_name_matches_only_itself(name: str) -> None:
    escaped = "".join("\\" + ch for ch in name)
    rules = IgnoreRules([escaped])
    assert rules.match(name, False) is True
    assert rules.match("dir/" + name, True) is True
    assert rules.match(name + "x", False) is None


@given(PATTERN_LISTS, st.lists(NAME, min_size=1, max_size=3), st.booleans())
def test_negation_and_last_match_wins(pats: list[str], parts: list[str], is_dir: bool) -> None:
    path = "/".join(parts)
    rules = IgnoreRules(pats)
    verdict = rules.match(path, is_dir)
    last = pats[-1].lstrip("!")
    flipped = IgnoreRules([*pats, last, "!" + last])
    if IgnoreRules(["!" + last]).match(path, is_dir) is None:
        assert flipped.match(path, is_dir) == verdict
    else:
        assert flipped.match(path, is_dir) is False
    # comments and blank lines change nothing
    assert IgnoreRules(["# x", *pats, "", "   "]).match(path, is_dir) == verdict


@given(PATTERN_LISTS, st.lists(NAME, min_size=1, max_size=3), st.booleans(), NAME)
def test_base_is_a_translation(pats: list[str], parts: list[str], is_dir: bool, base: str) -> None:
    path = "/".join(parts)
    at_root = IgnoreRules(pats).match(path, is_dir)
    assert IgnoreRules(pats, base=base).match(f"{base}/{path}", is_dir) == at_root
    assert IgnoreRules(pats, base=base + "/sub").match(path, is_dir) is None


@given(PATTERN_LISTS, st.lists(NAME, min_size=1, max_size=3))
def test_dir_only_patterns_never_match_files(pats: list[str], parts: list[str]) -> None:
    dir_only = [p.rstrip(" \\").rstrip("/") + "/" for p in pats if p.rstrip(" \\").rstrip("/")]
    assert IgnoreRules(dir_only).match("/".join(parts), False) is None


# ----------------------------------------------------------------------------------------------
# Differential testing against git itself.

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


@pytest.fixture(scope="module")
def git_dir() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory() as tmp:
        home = pathlib.Path(tmp)
        subprocess.run([GIT or "git", "init", "-q", "--bare", str(home / "repo.git")], check=True)
        yield home


def git_ignored(git_home: pathlib.Path, tree: pathlib.Path, paths: list[str]) -> dict[str, bool]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(git_home),
        "XDG_CONFIG_HOME": str(git_home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    cmd = [GIT or "git", "--git-dir", str(git_home / "repo.git"), "--work-tree", "."]
    cmd += ["-c", "core.ignorecase=false", "-c", "core.bare=false"]
    cmd += ["check-ignore", "--no-index", "--stdin", "-z", "-v", "-n"]
    stdin = b"".join(p.encode("utf-8") + b"\0" for p in paths)
    done = subprocess.run(cmd, cwd=tree, input=stdin, capture_output=True, env=env, check=False)
    assert done.returncode in (0, 1), done.stderr
    fields = done.stdout.split(b"\0")[:-1]
    assert len(fields) == 4 * len(paths)
    result: dict[str, bool] = {}
    for k in range(0, len(fields), 4):
        pattern, path = fields[k + 2], fields[k + 3].decode("utf-8")
        result[path] = bool(pattern) and not pattern.startswith(b"!")
    return result


@st.composite
def trees(draw: st.DrawFn) -> tuple[set[str], set[str]]:
    """(files, directories) of a small tree."""
    paths = draw(st.lists(st.lists(NAME, min_size=1, max_size=3), min_size=1, max_size=10))
    dirs = {"/".join(p[:k]) for p in paths for k in range(1, len(p))}
    files = {"/".join(p) for p in paths} - dirs
    return files, dirs


def build(root: pathlib.Path, files: set[str], dirs: set[str]) -> None:
    for d in sorted(dirs):
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f).write_bytes(b"x")


GIT_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@needs_git
@GIT_SETTINGS
@given(tree=trees(), pats=PATTERN_LISTS)
def test_rules_agree_with_git(
    git_dir: pathlib.Path, tree: tuple[set[str], set[str]], pats: list[str]
) -> None:
    files, dirs = tree
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        build(root, files, dirs)
        (root / ".gitignore").write_text("\n".join(pats) + "\n", encoding="utf-8")
        everything = sorted(files | dirs | {".gitignore"})
        expected = git_ignored(git_dir, root, everything)
        rules = IgnoreRules(pats)
        actual = {p: rules.is_ignored(p, p in dirs) for p in everything}
        assert actual == expected


@needs_git
@GIT_SETTINGS
@given(tree=trees(), data=st.data())
def test_scan_agrees_with_git(
    git_dir: pathlib.Path, tree: tuple[set[str], set[str]], data: st.DataObject
) -> None:
    files, dirs = tree
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        build(root, files, dirs)
        for where in ["", *sorted(dirs)]:
            if where == "" or data.draw(st.booleans()):
                pats = data.draw(PATTERN_LISTS)
                (root / where / ".gitignore").write_text("\n".join(pats), encoding="utf-8")
        all_files = sorted(str(p.relative_to(root).as_posix()) for p in root.rglob("*"))
        all_files = [p for p in all_files if (root / p).is_file()]
        expected = {
            p for p, ignored in git_ignored(git_dir, root, all_files).items() if not ignored
        }
        scan = scan_project(root, use_defaults=False)
        assert [f.rel_path for f in scan.files] == sorted(expected)
        assert scan.skipped == ()
