"""Which server a command talks to: ``--endpoint``, else ``AGENTFENSE_ENDPOINT``, else a
default (``localhost:9000``, or for ``run`` a server embedded in this process)."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from .._extras import server_extra_problem
from .._transport import DEFAULT_ENDPOINT
from ..client._environment import endpoint_or_configured
from ..errors import SandboxError, StatusCode
from ..types import TLSConfig

ENDPOINT_VARIABLE = "AGENTFENSE_ENDPOINT"


def chosen_endpoint(flag: str | None) -> str | None:
    """The endpoint asked for by the flag or the environment (an empty variable is unset; a
    malformed one is refused in a sentence that names it, as the SDK does)."""
    if flag:
        return flag
    if not os.environ.get(ENDPOINT_VARIABLE):
        return None
    return endpoint_or_configured(None)


def tls_flags(args: argparse.Namespace) -> tuple[bool, TLSConfig | None]:
    """``secure`` and ``tls`` for the SDK from --tls, --tls-ca, --tls-cert and --tls-key,
    each falling back to its ``AGENTFENSE_TLS_*`` variable (without any flag, the SDK reads
    the variables itself)."""
    if args.tls_ca is None and args.tls_cert is None and args.tls_key is None:
        return bool(args.tls), None
    ca, cert, key = (
        flag or os.environ.get(variable) or None
        for flag, variable in (
            (args.tls_ca, "AGENTFENSE_TLS_CA"),
            (args.tls_cert, "AGENTFENSE_TLS_CLIENT_CERT"),
            (args.tls_key, "AGENTFENSE_TLS_CLIENT_KEY"),
        )
    )
    return True, TLSConfig(ca=ca, cert=cert, key=key)


def endpoint_or_default(flag: str | None) -> str:
    return chosen_endpoint(flag) or DEFAULT_ENDPOINT


@contextlib.asynccontextmanager
async def endpoint_or_embedded(flag: str | None) -> AsyncIterator[str]:
    """The server asked for, or one embedded in this process for as long as the context."""
    requested = chosen_endpoint(flag)
    if requested:
        yield requested
        return
    problem = server_extra_problem()
    if problem is not None:
        raise SandboxError(
            f"without --endpoint or {ENDPOINT_VARIABLE}, run embeds a server; {problem}",
            code=StatusCode.FAILED_PRECONDITION,
        )
    from ..server.app import open_server
    from ..server.config import ServerConfig

    with tempfile.TemporaryDirectory(prefix="agentfense-run-") as state:
        config = ServerConfig(listen=f"unix:{state}/server.sock", state_dir=Path(state))
        async with open_server(config) as address:
            yield address
