"""Parsing of server endpoints (pure; no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from agentfense.errors import InvalidConfigurationError

DEFAULT_ENDPOINT = "localhost:9000"

_HINT = 'write it as "host:port", "[ipv6]:port" or "unix:/path/to.sock"'


@dataclass(frozen=True)
class Endpoint:
    """Where the server listens: a TCP ``host``/``port`` or a unix socket ``path``."""

    text: str
    host: str | None = None
    port: int | None = None
    path: str | None = None


def _invalid(endpoint: str, why: str) -> InvalidConfigurationError:
    return InvalidConfigurationError(f"endpoint {endpoint!r} is invalid: {why}; {_HINT}")


def _parse_port(endpoint: str, text: str) -> int:
    if not text.isdigit():
        raise _invalid(endpoint, f"the port {text!r} is not a number")
    port = int(text)
    if not 0 < port < 65536:
        raise _invalid(endpoint, f"the port {port} is outside 1-65535")
    return port


def parse_endpoint(endpoint: str) -> Endpoint:
    """The :class:`Endpoint` named by ``endpoint``; ``InvalidConfigurationError`` if malformed."""
    if not isinstance(endpoint, str):
        raise InvalidConfigurationError(f"endpoint must be a string, not {type(endpoint).__name__}")
    if not endpoint or endpoint != endpoint.strip() or any(c.isspace() for c in endpoint):
        raise _invalid(endpoint, "it is empty or contains whitespace")
    if endpoint.startswith("unix:"):
        if endpoint.startswith("unix://"):
            path = endpoint[len("unix://") :]
            if not path.startswith("/"):
                raise _invalid(endpoint, '"unix://" must be followed by an absolute path')
        else:
            path = endpoint[len("unix:") :]
        if not path or path.endswith("/"):
            raise _invalid(endpoint, "the unix socket path is missing")
        return Endpoint(text=endpoint, path=path)
    if "://" in endpoint:
        raise _invalid(endpoint, "a URL scheme is not accepted")
    if endpoint.startswith("["):
        close = endpoint.find("]")
        if close == -1 or not endpoint[close + 1 :].startswith(":"):
            raise _invalid(endpoint, "a bracketed IPv6 address must be followed by :port")
        host = endpoint[1:close]
        port_text = endpoint[close + 2 :]
        if not host or ":" not in host:
            raise _invalid(endpoint, f"{host!r} is not an IPv6 address")
    else:
        host, sep, port_text = endpoint.rpartition(":")
        if not sep:
            raise _invalid(endpoint, "it has no port")
        if not host:
            raise _invalid(endpoint, "the host is missing")
        if ":" in host:
            raise _invalid(endpoint, "an IPv6 address must be in brackets")
    return Endpoint(text=endpoint, host=host, port=_parse_port(endpoint, port_text))
