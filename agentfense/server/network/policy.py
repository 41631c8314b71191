"""A sandbox's network policy: the host patterns it may reach through the server's proxy,
within what the operator allows (pure: no I/O).

A pattern is ``host``, ``*.domain`` (any name below ``domain``, not ``domain`` itself) or
``*`` (any host: open egress), with ``:port``, ``:*`` (any port) or without (then ports 80
and 443). Names are
compared lowercase, without a trailing dot. An IP literal is a host like any other: a
pattern must name it. docs/network.md is the user's view.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ...errors import InvalidConfigurationError

WEB_PORTS = (80, 443)  # a pattern without a port
ANY_PORT = 0  # a pattern with ":*"
MAX_PATTERNS = 256  # in one sandbox's policy (each is matched against every connection)
MAX_PATTERN = 261  # characters: a 253-character name, "*." and ":65535"
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One pattern: ``host`` exactly, or (``wildcard``) any name below it; ``host`` empty
    for ``*``. ``port`` None means 80 and 443, ``ANY_PORT`` any."""

    host: str
    wildcard: bool
    port: int | None

    @property
    def text(self) -> str:
        host = "*" if not self.host else ("*." + self.host if self.wildcard else self.host)
        if ":" in host:  # (an IPv6 address: as a URL writes it)
            host = f"[{host}]"
            if self.port is None:
                return host
        if self.port is None:
            return host
        return f"{host}:*" if self.port == ANY_PORT else f"{host}:{self.port}"

    def allows_port(self, port: int) -> bool:
        if self.port is None:
            return port in WEB_PORTS
        return self.port in (ANY_PORT, port)

    def matches(self, host: str, port: int) -> bool:
        if not self.allows_port(port):
            return False
        if not self.host:
            return True
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def covers(self, other: HostPattern) -> bool:
        """Whether every (host, port) ``other`` allows, this one allows too."""
        if other.port == ANY_PORT and self.port != ANY_PORT:
            return False
        ports = WEB_PORTS if other.port is None else (other.port,)
        if other.port != ANY_PORT and not all(self.allows_port(port) for port in ports):
            return False
        if not self.host:
            return True
        if not other.host:
            return False
        if self.wildcard:
            return other.host.endswith("." + self.host) or (
                other.wildcard and other.host == self.host
            )
        return not other.wildcard and other.host == self.host


def normal_host(text: str) -> str:
    """``text`` as patterns and requests compare it: lowercase, no trailing dot, an IPv6
    literal without brackets; a sentence naming the problem when it is no host name."""
    host = text.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(part) for part in host.split(".")):
        raise InvalidConfigurationError(f"{text[:80]!r} is not a host name")
    return host


def parse_pattern(text: str) -> HostPattern:
    if not isinstance(text, str) or not text or len(text) > MAX_PATTERN:
        raise InvalidConfigurationError(f"network: {str(text)[:80]!r} is not a host pattern")
    host, port = text.strip(), None
    if host.startswith("["):  # [::1]:8080
        close = host.find("]")
        rest = host[close + 1 :]
        host, port_text = host[: close + 1], rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise InvalidConfigurationError(f"network: {text[:80]!r} is not a host pattern")
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    else:
        port_text = None
    if port_text == "*":
        port = ANY_PORT
    elif port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidConfigurationError(f"network: {text[:80]!r} has no port 1-65535")
        port = int(port_text)
    if host == "*":
        return HostPattern("", False, port)
    wildcard = host.startswith("*.")
    try:
        name = normal_host(host[2:] if wildcard else host)
    except InvalidConfigurationError:
        raise InvalidConfigurationError(
            f"network: {text[:80]!r} is not a host pattern (a name, *.domain or *, with "
            ":port or without)"
        ) from None
    if wildcard and (":" in name or name.replace(".", "").isdigit()):
        raise InvalidConfigurationError(f"network: {text[:80]!r}: no wildcard of an address")
    return HostPattern(name, wildcard, port)


def parse_patterns(texts: Iterable[str]) -> tuple[HostPattern, ...]:
    listed = list(texts)
    _check_count(listed)
    return tuple(dict.fromkeys(parse_pattern(text) for text in listed))


def _check_count(texts: Sequence[str]) -> None:
    """Refuse a list longer than MAX_PATTERNS before a pattern of it is looked at (a client's
    request may hold a million)."""
    if len(texts) > MAX_PATTERNS:
        raise InvalidConfigurationError(
            f"network: {len(texts)} host patterns; at most {MAX_PATTERNS} are allowed"
        )


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """What one sandbox may reach; no patterns: nothing (its network namespace stays
    empty, no proxy is put there)."""

    patterns: tuple[HostPattern, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.patterns)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(pattern.text for pattern in self.patterns)

    def allows(self, host: str, port: int) -> HostPattern | None:
        """The first pattern allowing ``host`` (normalised) on ``port``, or None."""
        for pattern in self.patterns:
            if pattern.matches(host, port):
                return pattern
        return None


NO_NETWORK = NetworkPolicy()


@dataclass(frozen=True, slots=True)
class OperatorNetwork:
    """The server's settings: what tenants may ask for, and where mapped names go."""

    cap: tuple[HostPattern, ...] = (HostPattern("", False, ANY_PORT),)  # ("*:*")
    open_egress: bool = True  # whether a sandbox may ask for "*"
    hosts: Mapping[str, str] = field(default_factory=dict)  # name -> address

    def policy(self, texts: Sequence[str]) -> NetworkPolicy:
        """The policy a client asks for (``["none"]`` or nothing: none), checked against the
        operator's cap; a sentence naming the first pattern refused otherwise."""
        _check_count(texts)
        if [text.strip().lower() for text in texts] in ([], ["none"]):
            return NO_NETWORK
        if any(text.strip().lower() == "none" for text in texts):
            raise InvalidConfigurationError('network: "none" cannot be listed with hosts')
        patterns = parse_patterns(texts)
        for pattern in patterns:
            if not pattern.host and not self.open_egress:
                raise InvalidConfigurationError(
                    'network: "*" (any host) is not allowed on this server (its operator '
                    "forbids open egress): name the hosts"
                )
            if not any(allowed.covers(pattern) for allowed in self.cap):
                allowed_texts = ", ".join(p.text for p in self.cap) or "none"
                raise InvalidConfigurationError(
                    f"network: {pattern.text!r} is beyond what this server allows ({allowed_texts})"
                )
        return NetworkPolicy(patterns)


def parse_host_map(value: object) -> dict[str, str]:
    """``[server.network_hosts]`` (name = "address"), or ``name=address,...`` from the
    environment: each name normalised, each address an IP."""
    if isinstance(value, str):
        pairs: list[tuple[object, object]] = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            left, equals, right = item.partition("=")
            if not equals:
                raise InvalidConfigurationError(f"network_hosts: {item[:80]!r} is not name=address")
            pairs.append((left, right))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise InvalidConfigurationError(
            "network_hosts must be a table (name = address) or name=address,..."
        )
    hosts: dict[str, str] = {}
    for key, address in pairs:
        name = str(key)
        try:
            hosts[normal_host(name)] = str(ipaddress.ip_address(str(address).strip()))
        except (InvalidConfigurationError, ValueError):
            raise InvalidConfigurationError(
                f"network_hosts: {name!s:.80} = {address!s:.80} is not a name and an IP address"
            ) from None
    return hosts


def parse_cap(value: object) -> tuple[HostPattern, ...]:
    """``network_allow``: a list of patterns (TOML), or ``a,b`` (the environment); an empty
    list or "none": no sandbox of this server may have network."""
    texts = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise InvalidConfigurationError("network_allow must be a list of host patterns")
    texts = [text for text in texts if text and text != "none"]
    try:
        return parse_patterns(texts)
    except InvalidConfigurationError as exc:
        raise InvalidConfigurationError(f"network_allow: {exc.message}") from None
