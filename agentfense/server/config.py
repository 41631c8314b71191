"""Server configuration: embedded defaults, then a TOML file, then ``AGENTFENSE_*`` variables,
then command-line flags (each later source wins)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidConfigurationError
from .network.policy import OperatorNetwork, parse_cap, parse_host_map
from .quotas import DEFAULT_QUOTA, QUOTA_NAMES, Quota, Quotas, parse_quotas

DEFAULT_LISTEN = "localhost:9000"


def parse_metrics_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6); a sentence naming the problem otherwise."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidConfigurationError(
            f"metrics_listen must be 'host:port' (or empty: no metrics), not {listen!r}"
        )
    return host, int(port)


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/agentfense")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "agentfense"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``agentfense serve`` can be told. Sizes in bytes, times in seconds."""

    listen: str = DEFAULT_LISTEN
    state_dir: Path = field(default_factory=default_state_dir)
    max_output_bytes: int = 16 * 1024 * 1024
    max_upload_bytes: int = 1024 * 1024 * 1024
    # The largest request message (an exec's stdin, one upload chunk, a rule list...): what
    # one request may make the server buffer. The SDK sends files in 256 KiB chunks.
    max_message_bytes: int = 4 * 1024 * 1024
    # The most entries one listing (ListFiles, ListSandboxFiles) returns: a larger one is
    # refused, as soon as the walk finds one more, rather than built whole in memory.
    max_list_entries: int = 100_000
    # What a sandbox may write between two commits (each command's delta): bytes, and new
    # entries (each costs an inode, whatever its size); ENOSPC beyond.
    max_delta_bytes: int = 4 * 1024 * 1024 * 1024
    max_delta_entries: int = 100_000
    # The most a codebase may hold (what its sandboxes write is refused with ENOSPC beyond;
    # 0: no limit).
    max_codebase_bytes: int = 64 * 1024 * 1024 * 1024
    max_codebase_entries: int = 1_000_000
    default_timeout: float = 300.0
    max_timeout: float = 24 * 3600.0
    expiry_check_interval: float = 1.0
    log_level: str = "info"
    # The host gid every sandbox shares (when the server runs as root), and the uid of every
    # sandbox when sandbox_uid_count is 0.
    sandbox_uid: int = 59000
    # Each sandbox's own host uid comes from sandbox_uid_first .. + sandbox_uid_count - 1,
    # allocated between the servers of the host (flock'd files in /run/agentfense/uids).
    sandbox_uid_first: int = 0x70000000
    sandbox_uid_count: int = 65536
    # The most processes a sandbox's uid may have (its RLIMIT_NPROC; 0: the server's own).
    sandbox_max_processes: int = 4096
    # The size of a sandbox's /tmp and /home tmpfs when it has no memory limit (with one,
    # they take at most half of it in all, with /dev/shm).
    sandbox_tmpfs_bytes: int = 512 * 1024 * 1024
    # Limits every sandbox gets unless it asks otherwise (at most the maximum), and the most
    # it may ask (0: none).
    default_memory_bytes: int = 0
    default_cpu_quota: int = 0
    default_pids_limit: int = 1024
    max_memory_bytes: int = 0
    max_cpu_quota: int = 0
    max_pids_limit: int = 0
    # What each tenant may hold at once (0: no limit), unless the config file gives it its
    # own quota in a [server.quotas.<tenant>] table (server/quotas.py).
    quota_sandboxes: int = DEFAULT_QUOTA.sandboxes
    quota_sessions: int = DEFAULT_QUOTA.sessions
    quota_codebases: int = DEFAULT_QUOTA.codebases
    quota_codebase_bytes: int = DEFAULT_QUOTA.codebase_bytes
    quota_codebase_entries: int = DEFAULT_QUOTA.codebase_entries
    quotas: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    # How many open sessions one sandbox may have (each holds three of the server's file
    # descriptors for its life).
    max_sessions_per_sandbox: int = 64
    # The Docker engine of the docker runtime ("" = $DOCKER_HOST, else the default socket).
    docker_host: str = ""
    # Where Prometheus scrapes the server's metrics ("host:port", GET /metrics; "" = nowhere).
    metrics_listen: str = ""
    # TLS on the TCP listener: the server's certificate chain and its private key (PEM paths;
    # "" = no TLS; a key in the certificate's file needs no tls_key), and for mutual TLS the
    # CA bundle that every client's certificate must be signed by (required when set).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Listen on an address other than loopback without TLS, or with auth "none": refused
    # unless this is set (and then logged as a WARNING at start).
    allow_insecure_listen: bool = False
    # "token": every call needs an API token (deployment.md, "Authentication"); "none":
    # anyone who reaches the listen address is the local owner (development only).
    auth: str = "token"
    # Where each API call is logged as a JSON line (a path, appended; "-" = stdout; "" = off).
    audit_log: str = ""
    # The network a sandbox may ask for (docs/network.md): the host patterns tenants may
    # list (an empty list: no sandbox has network), whether "*" (any host) may be asked
    # for, names the proxy resolves to an address of the operator's ([server.network_hosts]:
    # a mirror, a test server; loopback and private addresses only reachable so), and each
    # sandbox's limits: connections open at once, bytes per second both ways (0: no limit),
    # new connections a second (0: no limit), and the entries of its connection log kept.
    network_allow: tuple[str, ...] = ("*:*",)
    network_open_egress: bool = True
    network_hosts: Mapping[str, str] = field(default_factory=dict)
    network_max_connections: int = 64
    network_bytes_per_second: int = 0
    network_connections_per_second: int = 100
    network_log_entries: int = 1000

    def __post_init__(self) -> None:
        for name in (
            "max_output_bytes",
            "max_upload_bytes",
            "max_delta_bytes",
            "max_delta_entries",
            "max_list_entries",
        ):
            if getattr(self, name) <= 0:
                raise InvalidConfigurationError(f"{name} must be positive")
        for name in ("max_codebase_bytes", "max_codebase_entries"):
            if getattr(self, name) < 0:
                raise InvalidConfigurationError(f"{name} must be >= 0")
        for name in ("default_timeout", "max_timeout", "expiry_check_interval"):
            if getattr(self, name) <= 0:
                raise InvalidConfigurationError(f"{name} must be positive")
        for name in ("memory_bytes", "cpu_quota", "pids_limit"):
            default, most = getattr(self, f"default_{name}"), getattr(self, f"max_{name}")
            if default < 0 or most < 0:
                raise InvalidConfigurationError(f"default_{name} and max_{name} must be >= 0")
            # (a default above the maximum is the maximum: so a max_pids_limit below the
            # built-in default_pids_limit needs no default_pids_limit beside it)
        if self.max_message_bytes < 1024 * 1024:
            raise InvalidConfigurationError("max_message_bytes must be at least 1 MiB (1048576)")
        if self.max_sessions_per_sandbox < 1:
            raise InvalidConfigurationError("max_sessions_per_sandbox must be >= 1")
        Quota(**{name: getattr(self, f"quota_{name}") for name in QUOTA_NAMES})  # (checks)
        parse_quotas(self.quotas)
        if not 0 < self.sandbox_uid < 2**32 - 1:
            raise InvalidConfigurationError("sandbox_uid must be a uid other than root's")
        if self.sandbox_uid_count < 0 or not (
            self.sandbox_uid_first > 0
            and self.sandbox_uid_first + self.sandbox_uid_count < 2**32 - 1
        ):
            raise InvalidConfigurationError(
                "sandbox_uid_first and sandbox_uid_count must make a range of uids other than "
                "root's, below 4294967295"
            )
        if self.sandbox_max_processes < 0:
            raise InvalidConfigurationError("sandbox_max_processes must be >= 0")
        if self.sandbox_tmpfs_bytes <= 0:
            raise InvalidConfigurationError("sandbox_tmpfs_bytes must be positive")
        if self.default_timeout > self.max_timeout:
            raise InvalidConfigurationError("default_timeout must not exceed max_timeout")
        if self.metrics_listen:
            parse_metrics_listen(self.metrics_listen)
        if (self.tls_key or self.tls_client_ca) and not self.tls_cert:
            raise InvalidConfigurationError(
                "tls_key and tls_client_ca need tls_cert (the server's certificate) beside them"
            )
        self.operator_network()  # (checks the patterns and the host map)
        if self.network_max_connections < 1 or self.network_log_entries < 1:
            raise InvalidConfigurationError(
                "network_max_connections and network_log_entries must be >= 1"
            )
        if self.network_bytes_per_second < 0 or self.network_connections_per_second < 0:
            raise InvalidConfigurationError(
                "network_bytes_per_second and network_connections_per_second must be >= 0"
            )
        if self.auth not in ("token", "none"):
            raise InvalidConfigurationError(f"auth must be 'token' or 'none', not {self.auth!r}")

    def operator_network(self) -> OperatorNetwork:
        return OperatorNetwork(
            parse_cap(list(self.network_allow)),
            self.network_open_egress,
            parse_host_map(self.network_hosts),
        )

    def quota_table(self) -> Quotas:
        """Every tenant's quota: the default (``quota_*``) and the tenants' own."""
        default = Quota(**{name: getattr(self, f"quota_{name}") for name in QUOTA_NAMES})
        return Quotas(default, parse_quotas(self.quotas))

    def with_values(self, values: Mapping[str, Any]) -> ServerConfig:
        """A copy with ``values`` (strings are converted to each field's type)."""
        known = {f.name: f for f in fields(self)}
        converted: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                raise InvalidConfigurationError(
                    f"unknown setting {name!r}; known: {', '.join(sorted(known))}"
                )
            current = getattr(self, name)
            if name == "quotas":
                converted[name] = parse_quotas(value)
                continue
            if name == "network_allow":  # (a TOML list, or "a,b" from the environment)
                converted[name] = tuple(p.text for p in parse_cap(value))
                continue
            if name == "network_hosts":  # (a TOML table, or "name=address,...")
                converted[name] = parse_host_map(value)
                continue
            try:
                if isinstance(current, Path):
                    converted[name] = Path(value)
                elif isinstance(current, bool):
                    converted[name] = str(value).lower() in {"1", "true", "yes"}
                elif isinstance(current, int):
                    converted[name] = int(value)
                elif isinstance(current, float):
                    converted[name] = float(value)
                else:
                    converted[name] = str(value)
            except (TypeError, ValueError):
                raise InvalidConfigurationError(
                    f"setting {name} must be a {type(current).__name__}, not {value!r}"
                ) from None
        return replace(self, **converted)


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Defaults, then the TOML file (its ``[server]`` table or top level), env, overrides."""
    config = ServerConfig()
    environ = os.environ if environ is None else environ
    path = path or (Path(environ["AGENTFENSE_CONFIG"]) if "AGENTFENSE_CONFIG" in environ else None)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise InvalidConfigurationError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidConfigurationError(f"config {path} is not valid TOML: {exc}") from None
        config = config.with_values(data.get("server", data))
    names = {f.name for f in fields(ServerConfig)}
    from_env = {
        key[len("AGENTFENSE_") :].lower(): value
        for key, value in environ.items()
        if key.startswith("AGENTFENSE_") and key[len("AGENTFENSE_") :].lower() in names
    }
    config = config.with_values(from_env)
    return config.with_values({k: v for k, v in (overrides or {}).items() if v is not None})
