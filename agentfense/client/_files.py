"""Sandbox file operations carried out by commands inside the sandbox (pure helpers).

Going through the sandbox itself means its view and its permissions apply: a file the sandbox
cannot read cannot be read this way either. Content travels base64-encoded, so any bytes work.
"""

from __future__ import annotations

import base64
import binascii
import shlex
from datetime import UTC, datetime

from ..errors import InvalidConfigurationError, PermissionDeniedError, SandboxError, StatusCode
from ..types import ExecResult, FileInfo

WORKSPACE = "/workspace"


def sandbox_path(path: str) -> str:
    """An absolute path in the sandbox; relative paths are taken from ``/workspace``."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidConfigurationError("path must be a non-empty string without NUL")
    return path if path.startswith("/") else f"{WORKSPACE}/{path}"


def in_workspace(path: str) -> bool:
    """Whether ``path`` names something of the workspace (relative paths do)."""
    return not path.startswith("/") or path == WORKSPACE or path.startswith(WORKSPACE + "/")


def read_command(path: str) -> str:
    return f"base64 -w0 -- {shlex.quote(sandbox_path(path))}"


def write_command(path: str) -> str:
    target = shlex.quote(sandbox_path(path))
    return f'mkdir -p -- "$(dirname -- {target})" && base64 -d > {target}'


def list_command(path: str, recursive: bool) -> str:
    depth = "" if recursive else "-maxdepth 1 "
    return (
        f"find {shlex.quote(sandbox_path(path))} -mindepth 1 {depth}-printf '%y\\t%s\\t%T@\\t%P\\0'"
    )


def encode(content: bytes | str) -> str:
    data = content.encode() if isinstance(content, str) else bytes(content)
    return base64.b64encode(data).decode()


def check(result: ExecResult, what: str, path: str) -> None:
    """Raise the typed error for a failed file command (denied, missing, other)."""
    if result.exit_code == 0:
        return
    detail = (result.stderr.strip().splitlines() or [f"exit code {result.exit_code}"])[-1]
    message = f"cannot {what} {sandbox_path(path)}: {detail}"
    if "Permission denied" in detail or "Operation not permitted" in detail:
        raise PermissionDeniedError(message)
    if "No such file or directory" in detail or "Not a directory" in detail:
        raise SandboxError(
            f"file {sandbox_path(path)} not found in the sandbox", code=StatusCode.NOT_FOUND
        )
    raise SandboxError(message)


def decode(result: ExecResult, path: str) -> bytes:
    check(result, "read", path)
    try:
        return base64.b64decode(result.stdout, validate=True)
    except binascii.Error:
        raise SandboxError(f"cannot read {sandbox_path(path)}: garbled transfer") from None


def parse_listing(result: ExecResult, path: str) -> list[FileInfo]:
    check(result, "list", path)
    base = sandbox_path(path).rstrip("/")
    infos = []
    for entry in result.stdout.split("\0"):
        if not entry:
            continue
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
