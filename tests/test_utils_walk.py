"""Tests of choosing the files of a local project to upload, on real temporary trees."""

from __future__ import annotations

import builtins
import os
import pathlib
import socket
import sys
from typing import Any

import pytest

from agentfense.errors import InvalidConfigurationError
from agentfense.utils import (
    ProjectFile,
    SkippedEntry,
    iter_project_files,
    scan_project,
    walk_directory,
)


def make(root: pathlib.Path, spec: dict[str, str]) -> pathlib.Path:
    """Create files (``"path": "content"``); a path ending in ``/`` is an empty directory."""
    for rel, content in spec.items():
        target = root / rel
        if rel.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    return root


def paths(root: pathlib.Path, *args: Any, **kwargs: Any) -> list[str]:
    return [f.rel_path for f in iter_project_files(root, *args, **kwargs)]


def test_defaults_skip_vcs_caches_and_dependencies(tmp_path: pathlib.Path) -> None:
    make(
        tmp_path,
        {
            ".git/HEAD": "ref",
            ".git/objects/ab/cd": "x",
            "node_modules/left-pad/index.js": "x",
            "web/node_modules/x.js": "x",
            "src/__pycache__/m.cpython-311.pyc": "x",
            "src/m.py": "print()",
            "src/stale.pyc": "x",
            ".venv/bin/python": "x",
            ".mypy_cache/x": "x",
            "pkg.egg-info/PKG-INFO": "x",
            "dist/pkg.whl": "x",
            "build/out.o": "x",
            ".env": "SECRET=1",
        },
    )
    assert paths(tmp_path) == [".env", "build/out.o", "dist/pkg.whl", "src/m.py"]
    scan = scan_project(tmp_path)
    # .git, node_modules (twice), __pycache__, stale.pyc, .venv, .mypy_cache, pkg.egg-info
    assert scan.ignored_count == 8
    everything = paths(tmp_path, use_defaults=False)
    assert ".git/HEAD" in everything
    assert "web/node_modules/x.js" in everything
    assert len(everything) == 13


def test_user_patterns_take_precedence(tmp_path: pathlib.Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "dist/\n*.log\n",
            "dist/a.whl": "x",
            "debug.log": "x",
            "keep.log": "x",
            "node_modules/m/i.js": "x",
            "notes.md": "x",
        },
    )
    assert paths(tmp_path) == [".gitignore", "notes.md"]
    chosen = paths(tmp_path, ["!dist/", "!keep.log", "!node_modules/", "notes.md"])
    assert chosen == [".gitignore", "dist/a.whl", "keep.log", "node_modules/m/i.js"]
    assert paths(tmp_path, ("/.gitignore",)) == ["notes.md"]


def test_nested_ignore_files(tmp_path: pathlib.Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "*.tmp\n/secret.txt\ndata/\n",
            "secret.txt": "x",
            "a.tmp": "x",
            "sub/secret.txt": "x",  # "/secret.txt" is anchored to the root
            "sub/.gitignore": "!keep.tmp\n/local.txt\n",
            "sub/keep.tmp": "x",
            "sub/other.tmp": "x",
            "sub/local.txt": "x",
            "sub/deeper/local.txt": "x",
            "sub/deeper/keep.tmp": "x",
            "other/keep.tmp": "x",  # the negation applies to sub/ only
            "data/keep.tmp": "x",
            "sub/data/.gitignore": "!*\n",  # inside an ignored directory: never read
            "sub/data/x": "x",
        },
    )
    assert paths(tmp_path) == [
        ".gitignore",
        "sub/.gitignore",
        "sub/deeper/keep.tmp",
        "sub/deeper/local.txt",
        "sub/keep.tmp",
        "sub/secret.txt",
    ]


def test_sandboxignore_overrides_gitignore_in_same_directory(tmp_path: pathlib.Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "*.bin\ngenerated/\n",
            ".sandboxignore": "!model.bin\n!generated/\nREADME.md\n",
            "model.bin": "x",
            "other.bin": "x",
            "generated/g.py": "x",
            "README.md": "x",
            "sub/.sandboxignore": "*.py\n",
            "sub/.gitignore": "!*.py\n",
            "sub/m.py": "x",
        },
    )
    assert paths(tmp_path) == [
        ".gitignore",
        ".sandboxignore",
        "generated/g.py",
        "model.bin",
        "sub/.gitignore",
        "sub/.sandboxignore",
    ]


def test_ignored_directories_are_not_entered(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(tmp_path, {"node_modules/a/b.js": "x", "ok/c.txt": "x", ".gitignore": "ok/\n"})
    scanned: list[str] = []
    real_scandir = os.scandir

    def spy(path: Any) -> Any:
        scanned.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spy)
    scan = scan_project(tmp_path)
    assert [f.rel_path for f in scan.files] == [".gitignore"]
    assert scan.ignored_count == 2
    assert scanned == [str(tmp_path)]


def test_output_is_sorted_and_walk_reads_content(tmp_path: pathlib.Path) -> None:
    make(tmp_path, {"b.txt": "b", "a/x": "ax", "a.txt": "a", "a/b/c": "abc", "A": "upper"})
    expected = [
        ("A", b"upper"),
        ("a.txt", b"a"),
        ("a/b/c", b"abc"),
        ("a/x", b"ax"),
        ("b.txt", b"b"),
    ]
    assert list(walk_directory(tmp_path)) == expected
    assert list(walk_directory(str(tmp_path))) == expected
    files = list(iter_project_files(tmp_path))
    assert files[0] == ProjectFile("A", tmp_path / "A", 5)
    assert all(f.abs_path.is_absolute() for f in files)


def test_relative_root(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, {"proj/a.txt": "a"})
    monkeypatch.chdir(tmp_path)
    (file,) = iter_project_files("proj")
    assert file.abs_path == tmp_path / "proj" / "a.txt"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX symlinks")
def test_symlinks_are_reported_not_followed(tmp_path: pathlib.Path) -> None:
    outside = make(tmp_path / "outside", {"secret": "s", "d/f": "x"})
    root = make(tmp_path / "proj", {"real.txt": "r"})
    (root / "file-link").symlink_to(root / "real.txt")
    (root / "dir-link").symlink_to(outside / "d")
    (root / "escape").symlink_to(outside / "secret")
    (root / "broken").symlink_to(root / "missing")
    (root / "ignored-link").symlink_to(root / "real.txt")
    (root / ".gitignore").write_text("ignored-link\n")
    scan = scan_project(root)
    assert [f.rel_path for f in scan.files] == [".gitignore", "real.txt"]
    assert [s.rel_path for s in scan.skipped] == ["broken", "dir-link", "escape", "file-link"]
    assert all("symbolic link" in s.reason for s in scan.skipped)
    assert scan.ignored_count == 1
    assert [p for p, _ in walk_directory(root)] == [".gitignore", "real.txt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX symlinks")
def test_follow_symlinks(tmp_path: pathlib.Path) -> None:
    outside = make(tmp_path / "outside", {"d/f": "x"})
    root = make(tmp_path / "proj", {"real.txt": "r", "sub/a": "a"})
    (root / "file-link").symlink_to(root / "real.txt")
    (root / "dir-link").symlink_to(outside / "d")
    (root / "broken").symlink_to(root / "missing")
    (root / "sub" / "loop").symlink_to(root)
    scan = scan_project(root, follow_symlinks=True)
    assert [f.rel_path for f in scan.files] == ["dir-link/f", "file-link", "real.txt", "sub/a"]
    assert [s.rel_path for s in scan.skipped] == ["broken", "sub/loop"]
    assert dict(walk_directory(root, follow_symlinks=True))["file-link"] == b"r"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_special_files_are_skipped(tmp_path: pathlib.Path) -> None:
    root = make(tmp_path / "p", {"a.txt": "a"})
    os.mkfifo(root / "pipe")
    os.mkfifo(root / "ignored-pipe")
    (root / ".sandboxignore").write_text("ignored-pipe\n")
    sock = socket.socket(socket.AF_UNIX)
    sock_path = root / "s.sock"
    try:
        if len(os.fsencode(sock_path)) < 100:
            sock.bind(os.fspath(sock_path))
        scan = scan_project(root)
    finally:
        sock.close()
    assert [f.rel_path for f in scan.files] == [".sandboxignore", "a.txt"]
    reasons = {s.rel_path: s.reason for s in scan.skipped}
    assert "named pipe" in reasons["pipe"]
    if sock_path.exists():
        assert "socket" in reasons["s.sock"]
    assert scan.ignored_count == 1


def test_unreadable_entries_are_skipped(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(tmp_path, {"locked/x": "x", "secret.txt": "s", "ok.txt": "o"})
    real_scandir, real_access = os.scandir, os.access

    def scandir(path: Any) -> Any:
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    def access(path: Any, mode: int) -> bool:
        return not os.fspath(path).endswith("secret.txt") and real_access(path, mode)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "access", access)
    scan = scan_project(tmp_path)
    assert [f.rel_path for f in scan.files] == ["ok.txt"]
    assert scan.skipped == (
        SkippedEntry("locked", "directory could not be read: Permission denied"),
        SkippedEntry("secret.txt", "file is not readable: permission denied"),
    )


@pytest.mark.skipif(sys.platform != "linux", reason="needs byte file names")
def test_non_utf8_names_are_skipped(tmp_path: pathlib.Path) -> None:
    make(tmp_path, {"ok": "o"})
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff"), "wb") as handle:
        handle.write(b"x")
    scan = scan_project(tmp_path)
    assert [f.rel_path for f in scan.files] == ["ok"]
    (skipped,) = scan.skipped
    assert "UTF-8" in skipped.reason
    # an ignore pattern can still exclude it (matching works on bytes, as in git)
    assert scan_project(tmp_path, ["bad?"]).skipped == ()


def test_big_file_is_not_read(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        handle.truncate(3 * 1024**3)  # sparse: costs no disk space
    make(tmp_path, {"small.txt": "s", ".gitignore": "*.tmp\n"})
    opened: list[str] = []
    real_open = builtins.open

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    def no_read(self: pathlib.Path) -> bytes:
        raise AssertionError(f"{self} was read")

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(pathlib.Path, "read_bytes", no_read)
    monkeypatch.setattr(pathlib.Path, "open", no_read)
    files = {f.rel_path: f for f in iter_project_files(tmp_path)}
    assert files["big.bin"].size == 3 * 1024**3
    assert files["small.txt"].size == 1
    assert opened == [str(tmp_path / ".gitignore")]


def test_errors(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(InvalidConfigurationError, match="does not exist"):
        scan_project(missing)
    with pytest.raises(InvalidConfigurationError, match="does not exist"):
        walk_directory(missing)  # raised on the call, not on first iteration
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidConfigurationError, match="is not a directory"):
        iter_project_files(tmp_path / "f")
    with pytest.raises(InvalidConfigurationError, match="sequence of pattern strings"):
        scan_project(tmp_path, "*.py")
    with pytest.raises(InvalidConfigurationError, match="must contain strings"):
        scan_project(tmp_path, [b"*.py"])  # type: ignore[list-item]


def test_empty_project(tmp_path: pathlib.Path) -> None:
    scan = scan_project(tmp_path)
    assert (scan.files, scan.skipped, scan.ignored_count, scan.total_size) == ((), (), 0, 0)
