"""The parts of requests the client makes: durations and timeouts, upload pieces, runtimes,
and the paths of a review."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

from .. import _timeouts as timeouts
from .._proto.sandbox import v1 as pb
from ..errors import InvalidConfigurationError
from ..types import CommitMode, RuntimeType

UPLOAD_CHUNK = 256 * 1024


def duration(seconds: float | None, field: str) -> timedelta | None:
    if seconds is None:
        return None
    if seconds < 0:
        raise InvalidConfigurationError(f"{field} must not be negative")
    return timedelta(seconds=seconds)


def set_timeout(request: pb.ExecRequest | pb.SessionExecRequest, timeout: float | None) -> None:
    duration, request.no_timeout = timeouts.to_wire(timeout)
    if duration is not None:
        request.timeout = duration


def as_bytes(content: bytes | str) -> bytes:
    return content.encode() if isinstance(content, str) else bytes(content)


def pieces(data: bytes) -> Iterator[bytes]:
    """``data`` in upload-sized pieces (none for empty data)."""
    for start in range(0, len(data), UPLOAD_CHUNK):
        yield data[start : start + UPLOAD_CHUNK]


def read_if_small(path: Path) -> tuple[bytes | None, bool]:
    """The whole file if it is at most one upload chunk, else None (to be streamed); and
    whether it is executable."""
    with path.open("rb") as handle:
        executable = is_executable(os.fstat(handle.fileno()).st_mode)
        data = handle.read(UPLOAD_CHUNK + 1)
    return (data if len(data) <= UPLOAD_CHUNK else None), executable


def is_executable(mode: int) -> bool:
    return bool(mode & stat.S_IXUSR)


def runtime_type(value: RuntimeType | str) -> RuntimeType:
    try:
        return RuntimeType(value)
    except ValueError:
        raise InvalidConfigurationError(
            f"runtime must be 'bwrap' or 'docker', not {value!r}"
        ) from None


def review_paths(paths: Iterable[str] | str | None) -> list[str]:
    """The paths of a review request ([] for every path; a lone string is one path)."""
    if paths is None:
        return []
    chosen = [paths] if isinstance(paths, str) else list(paths)
    for path in chosen:
        if not isinstance(path, str) or not path:
            raise InvalidConfigurationError(f"paths must be non-empty strings, not {path!r}")
    return chosen


def commit_mode(value: CommitMode | str) -> CommitMode:
    try:
        return CommitMode(value)
    except ValueError:
        raise InvalidConfigurationError(
            f"commit must be 'auto' or 'manual', not {value!r}"
        ) from None


def network_patterns(value: Iterable[str] | str | None) -> list[str]:
    """``network=``: None or "none" (no network), or host patterns (a lone string is one);
    the server checks each pattern and says what is wrong with it."""
    chosen = [] if value is None else [value] if isinstance(value, str) else list(value)
    if [text.strip().lower() if isinstance(text, str) else text for text in chosen] == ["none"]:
        return []
    for pattern in chosen:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidConfigurationError(
                f"network must list host patterns (non-empty strings), not {pattern!r}"
            )
    return chosen
