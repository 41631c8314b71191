"""Who can reach a TCP listener: a non-loopback address without TLS, or without
authentication (``auth = "none"``), is refused at start unless forced."""

from __future__ import annotations

import ipaddress
import logging

from ..errors import InvalidConfigurationError
from .config import ServerConfig

log = logging.getLogger("agentfense.server")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); no name is resolved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServerConfig, host: str) -> None:
    """Refuse (a sentence naming the flag that forces it) or, when forced, warn loudly."""
    if is_loopback(host):
        return
    missing, fixes = [], []
    if not config.tls_cert:
        missing.append("TLS")
        fixes.append("set tls_cert and tls_key (--tls-cert, --tls-key)")
    if config.auth == "none":
        missing.append('authentication (auth = "none")')
        fixes.append('set auth = "token"')
    if not missing:
        return
    without = " and ".join(missing)
    if not config.allow_insecure_listen:
        raise InvalidConfigurationError(
            f"refusing to listen on {host}, which is not loopback, without {without}: anyone "
            f"who can reach it could run commands in sandboxes; {' and '.join(fixes)}, or "
            "force it with --insecure-listen (setting allow_insecure_listen = true)"
        )
    log.warning(
        "INSECURE: listening on %s, which is not loopback, without %s, because "
        "allow_insecure_listen is set: anyone who can reach it can run commands in sandboxes "
        "and read every codebase",
        host,
        without,
    )
