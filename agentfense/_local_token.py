"""The local owner's token file: where a server with ``auth = "token"`` leaves a token of
tenant ``local`` for the user who runs it, and where the SDK, run by that user, finds it.

One file per endpoint, ``~/.config/agentfense/tokens/<key>`` (the directory 0700, the file
0600, both the user's): the key is the endpoint as the server listens on it, with the
spellings of one place made one (``unix:/p`` and ``unix:///p`` are ``/p``; ``localhost``,
``127.0.0.1`` and ``[::1]`` are ``localhost``). Shared by both sides, pure but for the file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from urllib.parse import quote

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_MOST = 512  # a token is ~60 characters; a larger file is not one of ours


def endpoint_key(endpoint: str) -> str:
    """The one spelling of ``endpoint`` (``unix:/path`` or ``host:port``) for its token file."""
    if endpoint.startswith("unix:"):
        path = endpoint[len("unix:") :]
        while path.startswith("//"):
            path = path[1:]
        return os.path.normpath(os.path.abspath(path))
    host, _, port = endpoint.rpartition(":")
    host = host.removeprefix("[").removesuffix("]").lower()
    return f"{'localhost' if host in _LOOPBACK else host}:{port}"


def token_path(endpoint: str) -> Path:
    """Where the local owner's token for ``endpoint`` is kept (for the current ``$HOME``)."""
    return Path.home() / ".config" / "agentfense" / "tokens" / quote(endpoint_key(endpoint), "")


def read_local_token(endpoint: str) -> str | None:
    """The token the server at ``endpoint`` left for this user, if there is one that this
    user alone owns and can read (a file others could write is not trusted)."""
    try:
        fd = os.open(token_path(endpoint), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            return None
        text = handle.read(_MOST + 1).decode(errors="replace").strip()
    return text if 0 < len(text) <= _MOST and text.isprintable() else None


def write_local_token(endpoint: str, token: str) -> Path:
    """Leave ``token`` for ``endpoint`` where :func:`read_local_token` finds it (atomically)."""
    path = token_path(endpoint)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path
