"""The local owner's token file: where a server with ``auth = "token"`` leaves a token of
tenant ``local`` for the user who runs it, and where the SDK, run by that user, finds it.

One file per endpoint, ``~/.config/agentfense/tokens/<key>`` (the directory 0700, the file
0600, both the user's): the key is the endpoint as the server listens on it, with the
spellings of one place made one (``unix:/p`` and ``unix:///p`` are ``/p``; ``localhost``,
``127.0.0.1``, ``[::1]`` and the wildcard addresses are ``localhost``). Shared by both sides.

The SDK hands the token only to a server of its own user: a unix socket it owns, or a TCP
port every listener of which is its (``/proc/net/tcp``, ``tcp6``). Another local user who
listens on the same port first, or on the other loopback address (``[::1]`` beside
``127.0.0.1``), would otherwise be sent the token by a client that names ``localhost``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from urllib.parse import quote

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})
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


def _listeners_are_mine(endpoint: str) -> bool:
    """Whether what listens at ``endpoint`` is this user's (and something does)."""
    if endpoint.startswith("unix:"):
        try:
            info = os.stat(endpoint_key(endpoint))
        except OSError:
            return False
        return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid()
    port = endpoint.rpartition(":")[2]
    if not port.isdigit():
        return False
    owners = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == int(port):
                owners.add(int(fields[7]))  # (a LISTEN socket on the port, and its uid)
    return owners == {os.geteuid()}


def read_local_token(endpoint: str) -> str | None:
    """The token the server at ``endpoint`` left for this user, if there is one that this
    user alone owns and can read (a file others could write is not trusted), and what listens
    at ``endpoint`` is this user's too."""
    return read_token_file(endpoint) if _listeners_are_mine(endpoint) else None


def read_token_file(endpoint: str) -> str | None:
    """The token file's token for ``endpoint``, if this user alone owns and can read it (the
    server's check before it makes a new one; clients use :func:`read_local_token`)."""
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
