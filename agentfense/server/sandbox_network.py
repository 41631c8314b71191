"""The network of the server's sandboxes: each policy checked against the operator's
settings at create; a proxy put into each sandbox that has one at every start, and taken
away at its stop; the denials written to the audit log. ``network/`` holds the parts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import anyio
import anyio.abc

from ..errors import InvalidConfigurationError
from ..runtimes.base import RuntimeError_, SandboxHandle
from .audit_log import AuditLog
from .config import ServerConfig
from .network.connections import ConnectionLog, target
from .network.netns import proxy_sockets
from .network.policy import NetworkPolicy, OperatorNetwork
from .network.proxy import NetworkLimits, SandboxProxy
from .sandbox_table import SandboxRecord


class SandboxNetworks:
    def __init__(self, config: ServerConfig, audit: AuditLog | None) -> None:
        self._operator: OperatorNetwork = config.operator_network()
        self._limits = NetworkLimits(
            config.network_max_connections,
            config.network_bytes_per_second,
            config.network_connections_per_second,
        )
        self._log_entries = config.network_log_entries
        self._server_ports = frozenset(_server_ports(config))
        self._audit = audit

    def policy(self, texts: Sequence[str]) -> NetworkPolicy:
        """What a client asks for, checked (InvalidConfigurationError, naming the pattern)."""
        policy = self._operator.policy(texts)
        if policy.enabled and os.geteuid() != 0:
            raise InvalidConfigurationError(
                "network: this server cannot give sandboxes a network (it does not run as "
                "root, which joining a sandbox's network namespace needs)"
            )
        return policy

    def give(self, record: SandboxRecord, policy: NetworkPolicy) -> None:
        record.network = policy
        if policy.enabled:
            record.network_log = ConnectionLog(self._log_entries)

    async def start(
        self, record: SandboxRecord, handle: SandboxHandle, task_group: anyio.abc.TaskGroup
    ) -> None:
        """Put the proxy into the sandbox just started (RuntimeError_ when it cannot be); the
        one of its last start goes first (its processes died: it was never stopped)."""
        self.stop(record)
        if not record.network.enabled or record.network_log is None:
            return
        netns = handle.network_namespace()
        if netns is None:
            raise RuntimeError_("its runtime cannot give it a network here")
        try:
            made = await proxy_sockets(netns)
        except OSError as exc:
            raise RuntimeError_(f"cannot put its proxy in place: {exc.strerror}") from None
        finally:
            os.close(netns)
        tenant, sandbox_id = record.tenant, record.id

        def denied(kind: str, host: str, port: int, reason: str, unreported: int) -> None:
            if self._audit is not None:
                self._audit.network_denial(
                    tenant=tenant,
                    sandbox_id=sandbox_id,
                    kind=kind,
                    target=target(kind, host, port),
                    reason=reason,
                    unreported=unreported,
                )

        proxy = SandboxProxy(
            record.network,
            self._operator,
            self._limits,
            record.network_log,
            server_ports=self._server_ports,
            on_denied=denied,
        )
        scope = record.proxy = anyio.CancelScope()

        async def serve() -> None:
            with scope:
                await proxy.serve(made)

        task_group.start_soon(serve)  # (it owns the sockets from now on)
        # (a Docker sandbox without the confine helper cannot: its raw sockets go unlogged)
        handle.watch_raw_sockets(proxy.raw_sockets.give)

    @staticmethod
    def stop(record: SandboxRecord) -> None:
        """Take the proxy away: its sockets close, every connection through it ends."""
        scope, record.proxy = record.proxy, None
        if scope is not None:
            scope.cancel()


def _server_ports(config: ServerConfig) -> list[int]:
    """The TCP ports the server listens on (its API, its metrics)."""
    ports = []
    for listen in (config.listen, config.metrics_listen):
        if listen and not listen.startswith("unix:"):
            with contextlib.suppress(ValueError):
                ports.append(int(listen.rsplit(":", 1)[1]))
    return ports
