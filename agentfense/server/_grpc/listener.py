"""The gRPC server object: both services, each call authenticated and audited, behind the
wire checks, with the error-kind codec, every call counted; grpclib's per-call log lines kept
out of INFO."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from grpclib.server import Server

from ..._error_details import ReasonCodec
from ..audit_log import AuditLog
from ..codebases import CodebaseStore
from ..config import ServerConfig
from ..metrics import ServerMetrics
from ..sandboxes import SandboxManager
from ..tokens import TokenStore
from .authentication import front_door
from .call_metrics import call_metrics
from .codebase_service import CodebaseService
from .quiet_logs import quiet_per_call_logs
from .sandbox_service import SandboxService
from .wire_checks import wire_checks


class Listener:
    """grpclib's server for one ``agentfense serve``: start it on a path or a port, close it."""

    def __init__(
        self,
        config: ServerConfig,
        store: CodebaseStore,
        manager: SandboxManager,
        spool: Path,
        metrics: ServerMetrics,
        *,
        tokens: TokenStore | None,
        audit: AuditLog | None,
    ) -> None:
        quiet_per_call_logs()
        services = [
            CodebaseService(
                store,
                in_use=manager.uses_codebase,
                changed=manager.codebase_changed,
                max_upload_bytes=config.max_upload_bytes,
                max_list_entries=config.max_list_entries,
            ),
            SandboxService(
                manager,
                max_upload_bytes=config.max_upload_bytes,
                max_list_entries=config.max_list_entries,
                spool_dir=spool,
            ),
        ]
        checked = [
            call_metrics(
                wire_checks(front_door(service, tokens, audit), config.max_message_bytes), metrics
            )
            for service in services
        ]
        self._server = Server(checked, status_details_codec=ReasonCodec())

    async def start_unix(self, path: Path) -> None:
        await self._server.start(path=str(path))

    async def start_tcp(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on ``host:port`` (over TLS with ``tls``); the port bound (``port`` 0: one
        the kernel chose)."""
        await self._server.start(host, port, ssl=tls)
        listening: Any = getattr(self._server, "_server", None)  # grpclib's asyncio server
        sockets = getattr(listening, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    def close(self) -> None:
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()
