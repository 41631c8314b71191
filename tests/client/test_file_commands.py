"""The commands behind the sandbox file API on servers without its RPCs: what they send back
is checked, so output cut short or content dropped is an error, never a smaller success."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from agentfense.client import _files
from agentfense.errors import (
    InvalidConfigurationError,
    ResourceLimitExceededError,
    SandboxError,
    StatusCode,
)
from agentfense.types import ExecResult


def _sh(command: str, stdin: str = "", cwd: Path | None = None) -> ExecResult:
    """``command`` run by a real ``sh`` here, as the sandbox would run it."""
    done = subprocess.run(
        ["sh", "-c", command], input=stdin, capture_output=True, text=True, cwd=cwd, check=False
    )
    return ExecResult(done.stdout, done.stderr, done.returncode)


def test_a_read_cut_short_is_an_error(tmp_path: Path) -> None:
    data = bytes(range(256)) * 3
    (tmp_path / "f").write_bytes(data)
    whole = _sh(_files.read_command(str(tmp_path / "f")))
    assert _files.decode(whole, str(tmp_path / "f")) == data
    encoded = base64.b64encode(data).decode()
    for cut in (encoded[:400], encoded, whole.stdout[:-1], ""):
        with pytest.raises(SandboxError, match="cut short") as caught:
            _files.decode(ExecResult(cut, "", 0), "f")
        assert caught.value.code == StatusCode.DATA_LOSS


def test_an_empty_file_reads_back(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    result = _sh(_files.read_command(str(tmp_path / "empty")))
    assert _files.decode(result, "empty") == b""


def test_a_listing_cut_short_is_an_error(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
    whole = _sh(_files.list_command(str(tmp_path), recursive=False))
    assert [f.name for f in _files.parse_listing(whole, str(tmp_path))] == ["a", "b", "c"]
    last_entry = whole.stdout.rstrip("\0").rsplit("\0", 1)[0] + "\0"
    for cut in (last_entry, whole.stdout[:-1], ""):
        with pytest.raises(SandboxError, match="cut short"):
            _files.parse_listing(ExecResult(cut, "", 0), str(tmp_path))


def test_a_write_whose_stdin_is_lost_leaves_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out" / "t.bin"
    target.parent.mkdir()
    target.write_bytes(b"before")
    data = b"\x00\xffafter"
    command = _files.write_command(str(target), data)
    for sent in ("", _files.encode(data[:-1]), "not base64!"):
        result = _sh(command, sent)
        with pytest.raises(SandboxError, match="nothing was written") as caught:
            _files.check_written(result, str(target))
        assert caught.value.code == StatusCode.DATA_LOSS
        assert target.read_bytes() == b"before"
    _files.check_written(_sh(command, _files.encode(data)), str(target))
    assert target.read_bytes() == data
    fresh = tmp_path / "new" / "deeper" / "f"
    _files.check_written(_sh(_files.write_command(str(fresh), b""), ""), str(fresh))
    assert fresh.read_bytes() == b""


def test_a_read_larger_than_its_limit_is_refused_not_cut(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 11)
    (tmp_path / "g").write_bytes(b"x" * 10)
    with pytest.raises(ResourceLimitExceededError, match="larger than the 10 bytes"):
        _files.decode(_sh(_files.read_command(str(tmp_path / "f"), 10)), "f", 10)
    assert _files.decode(_sh(_files.read_command(str(tmp_path / "g"), 10)), "g", 10) == b"x" * 10


def test_a_read_refuses_what_is_not_a_regular_file_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")  # nobody writes it: opening it would block
    (tmp_path / "zero").symlink_to("/dev/zero")
    for name in ("pipe", "zero"):
        result = _sh(_files.read_command(str(tmp_path / name)))
        with pytest.raises(InvalidConfigurationError, match="not a regular file"):
            _files.decode(result, name)
    with pytest.raises(SandboxError) as missing:
        _files.decode(_sh(_files.read_command(str(tmp_path / "none"))), "none")
    assert missing.value.code == StatusCode.NOT_FOUND
