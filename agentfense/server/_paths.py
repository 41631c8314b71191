"""Normalisation of user-given file paths into safe relative POSIX paths (pure, no I/O)."""

from __future__ import annotations

__all__ = ["MAX_PATH_BYTES", "MAX_SEGMENT_BYTES", "InvalidPathError", "normalize_relpath"]

MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255


class InvalidPathError(ValueError):
    """A user-given path cannot be used; ``reason`` completes a sentence about the path."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"path {reason}")
        self.reason = reason

    def for_field(self, field: str) -> str:
        """The message with the request field named, e.g. ``"file_path must not ..."``."""
        return f"{field} {self.reason}"


def _encoded(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidPathError("must be valid UTF-8 text") from None


def wire_text(text: str) -> str:
    """``text`` as valid UTF-8 (host file names may hold undecodable bytes)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def normalize_relpath(raw: str, *, allow_root: bool = False) -> str:
    """Turn ``raw`` ("/a//./b.txt") into a relative POSIX path ("a/b.txt").

    Leading slashes are stripped and ``.`` segments dropped. ``..`` segments, NUL bytes,
    paths over 4096 bytes and segments over 255 bytes are refused with
    :class:`InvalidPathError`. The root ("", "/") is returned as "" only when ``allow_root``.
    """
    if not isinstance(raw, str):
        raise InvalidPathError(f"must be a string, not {type(raw).__name__}")
    if "\x00" in raw:
        raise InvalidPathError("must not contain NUL bytes")
    if len(_encoded(raw)) > MAX_PATH_BYTES:
        raise InvalidPathError(f"must not be longer than {MAX_PATH_BYTES} bytes")
    segments: list[str] = []
    for segment in raw.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            raise InvalidPathError("must not contain '..'")
        if len(_encoded(segment)) > MAX_SEGMENT_BYTES:
            raise InvalidPathError(
                f"must not have a component longer than {MAX_SEGMENT_BYTES} bytes"
            )
        segments.append(segment)
    if not segments:
        if allow_root:
            return ""
        if not raw:
            raise InvalidPathError("must not be empty")
        raise InvalidPathError("must name a file, not the workspace root")
    return "/".join(segments)
