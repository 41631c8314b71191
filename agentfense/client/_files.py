"""Sandbox file operations carried out by commands inside the sandbox (pure helpers).

Going through the sandbox itself means its view and its permissions apply: a file the sandbox
cannot read cannot be read this way either. Content travels base64-encoded, so any bytes work.

What travels is checked, so that a server that loses part of it never makes a failure look
like success: a write sends its content on the command's stdin to a temporary file in the
sandbox's ``/tmp``, which reaches the target only if its size and SHA-256 are what was sent
(some servers, such as the upstream Go server, drop an Exec's stdin: the write is then
refused and the target left as it was); a read and a listing end with a marker, so that
output cut short is an error. (A read is one pass over the file: ``/proc`` files and files
being written change between two.)

A read is bounded, whatever the sandbox put at the path: only a regular file is read (not a
FIFO nobody writes, nor a link to ``/dev/zero``), at most ``READ_LIMIT`` bytes of it (a file
larger is refused), and the command has ``READ_TIMEOUT`` seconds (a FIFO swapped in after the
check holds it no longer).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shlex
from datetime import UTC, datetime

from ..errors import (
    CommandTimeoutError,
    InvalidConfigurationError,
    PermissionDeniedError,
    ResourceLimitExceededError,
    SandboxError,
    StatusCode,
)
from ..types import ExecResult, FileInfo

WORKSPACE = "/workspace"
# A write whose content did not arrive whole exits with this code and says so on stderr.
SHORT_WRITE_EXIT = 86
SHORT_WRITE_MARK = "agentfense: received "
_END = "end"
# The most a read through a command carries: base64 makes it a third larger, and it must fit
# in the server's output cap (max_output_bytes, 16 MiB by default on ours).
READ_LIMIT = 8 * 1024 * 1024
# How long a read through a command may take (seconds).
READ_TIMEOUT = 30.0
# A read of something that is not a regular file exits with this code and says why on stderr.
NOT_REGULAR_EXIT = 87


def sandbox_path(path: str) -> str:
    """An absolute path in the sandbox; relative paths are taken from ``/workspace``."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidConfigurationError("path must be a non-empty string without NUL")
    return path if path.startswith("/") else f"{WORKSPACE}/{path}"


def in_workspace(path: str) -> bool:
    """Whether ``path`` names something of the workspace (relative paths do)."""
    return not path.startswith("/") or path == WORKSPACE or path.startswith(WORKSPACE + "/")


def read_command(path: str, limit: int = READ_LIMIT) -> str:
    """The file base64-encoded (at most ``limit`` + 1 bytes of it, to tell a file too large),
    then a space and the end marker. Opened (``exec 3<``) before it is read, so that a file
    that cannot be opened fails the command rather than read as empty."""
    target = shlex.quote(sandbox_path(path))
    return (
        f"if [ -d {target} ]; then echo 'is a directory' >&2; exit {NOT_REGULAR_EXIT}; fi; "
        f"if [ -e {target} ] && [ ! -f {target} ]; then "
        f"echo 'is not a regular file (a FIFO, a socket or a device)' >&2; "
        f"exit {NOT_REGULAR_EXIT}; fi; "
        f"exec 3< {target} || exit 1; "
        f"head -c {limit + 1} <&3 | base64 -w0 && printf ' {_END}'"
    )


def read_timed_out(path: str, timeout: float | None) -> SandboxError:
    """What a read through a command that did not end in ``timeout`` seconds (None: the
    server's default timeout) raises."""
    within = f"{timeout:g} s" if timeout is not None else "the server's default timeout"
    return CommandTimeoutError(
        f"cannot read {sandbox_path(path)}: the read did not end within {within} "
        "(a FIFO or a device that gives nothing?)"
    )


def write_command(path: str, data: bytes) -> str:
    """Decode stdin into a temporary file; copy it onto ``path`` only if it is ``data``."""
    target = shlex.quote(sandbox_path(path))
    digest = hashlib.sha256(data).hexdigest()
    return (
        "t=$(mktemp) || exit 1; "
        f'if base64 -d > "$t" && [ "$(wc -c < "$t")" -eq {len(data)} ] '
        f'&& [ "$(sha256sum < "$t")" = "{digest}  -" ]; then '
        f'mkdir -p -- "$(dirname -- {target})" && cat -- "$t" > {target}; s=$?; '
        'rm -f -- "$t"; exit $s; fi; '
        f'echo "{SHORT_WRITE_MARK}$(wc -c < "$t") of {len(data)} bytes" >&2; '
        f'rm -f -- "$t"; exit {SHORT_WRITE_EXIT}'
    )


def list_command(path: str, recursive: bool) -> str:
    depth = "" if recursive else "-maxdepth 1 "
    return (
        f"find {shlex.quote(sandbox_path(path))} -mindepth 1 {depth}"
        f"-printf '%y\\t%s\\t%T@\\t%P\\0' && printf '{_END}\\0'"
    )


def as_bytes(content: bytes | str) -> bytes:
    return content.encode() if isinstance(content, str) else bytes(content)


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_written(result: ExecResult, path: str) -> None:
    """Raise if the content did not arrive whole (nothing was written then), or the write
    failed in the sandbox."""
    detail = result.stderr.strip().splitlines()[-1:] or [""]
    if result.exit_code == SHORT_WRITE_EXIT and detail[0].startswith(SHORT_WRITE_MARK):
        received = detail[0][len(SHORT_WRITE_MARK) :]
        raise SandboxError(
            f"cannot write {sandbox_path(path)}: the command in the sandbox received "
            f"{received} (the server lacks the sandbox-file RPCs and dropped or cut short the "
            "content sent on the command's stdin); nothing was written",
            code=StatusCode.DATA_LOSS,
        )
    check(result, "write", path)


def check(result: ExecResult, what: str, path: str) -> None:
    """Raise the typed error for a failed file command (denied, missing, other)."""
    if result.exit_code == 0:
        return
    detail = (result.stderr.strip().splitlines() or [f"exit code {result.exit_code}"])[-1]
    message = f"cannot {what} {sandbox_path(path)}: {detail}"
    said = detail.lower()  # (each shell words it its own way: dash, busybox's ash, bash)
    if "permission denied" in said or "operation not permitted" in said:
        raise PermissionDeniedError(message)
    if any(words in said for words in ("no such file", "not a directory", "nonexistent dir")):
        raise SandboxError(
            f"file {sandbox_path(path)} not found in the sandbox", code=StatusCode.NOT_FOUND
        )
    raise SandboxError(message)


def decode(result: ExecResult, path: str, limit: int = READ_LIMIT) -> bytes:
    """The content a ``read_command(path, limit)`` sent back."""
    if result.exit_code == NOT_REGULAR_EXIT:
        detail = (result.stderr.strip().splitlines() or ["is not a regular file"])[-1]
        raise InvalidConfigurationError(f"cannot read {sandbox_path(path)}: it {detail}")
    check(result, "read", path)
    encoded, space, end = result.stdout.rpartition(" ")
    try:
        if space and end == _END:
            data = base64.b64decode(encoded, validate=True)
            if len(data) > limit:
                raise ResourceLimitExceededError(
                    f"cannot read {sandbox_path(path)}: it is larger than the {limit} bytes "
                    "a read through a command in the sandbox carries (a file of /workspace "
                    "is read whole by the server's file RPCs)"
                )
            return data
    except binascii.Error:
        pass
    raise SandboxError(
        f"cannot read {sandbox_path(path)}: its content arrived garbled or cut short",
        code=StatusCode.DATA_LOSS,
    )


def parse_listing(result: ExecResult, path: str) -> list[FileInfo]:
    check(result, "list", path)
    entries = result.stdout.split("\0")
    if entries[-2:] != [_END, ""]:
        raise SandboxError(
            f"cannot list {sandbox_path(path)}: the listing arrived cut short",
            code=StatusCode.DATA_LOSS,
        )
    base = sandbox_path(path).rstrip("/")
    infos = []
    for entry in entries[:-2]:
        kind, size, mtime, rel = entry.split("\t", 3)
        infos.append(
            FileInfo(
                path=f"{base}/{rel}",
                name=rel.rsplit("/", 1)[-1],
                is_dir=kind == "d",
                size=int(size) if kind != "d" else 0,
                modified_at=datetime.fromtimestamp(float(mtime), UTC),
            )
        )
    return sorted(infos, key=lambda info: info.path)
