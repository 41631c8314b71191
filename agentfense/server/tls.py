"""The server's TLS: the ssl context ``tls_cert``/``tls_key`` (and ``tls_client_ca`` for mutual
TLS) make, and a sentence for each way they can be wrong, at start."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidConfigurationError
from .config import ServerConfig

# What grpclib's own client offers, and what HTTP/2 allows over TLS 1.2 (RFC 7540, 9.2.2):
# forward-secret AEAD suites only. TLS 1.3's suites are not set by this string.
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def _readable(setting: str, path: Path) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise InvalidConfigurationError(
            f"{setting} {path} cannot be read: {exc.strerror or exc}"
        ) from None


def _no_password(key: Path) -> Callable[[], str]:
    """What OpenSSL asks for an encrypted key's password (it would prompt on the terminal)."""

    def refuse() -> str:
        raise InvalidConfigurationError(
            f"tls_key {key} is encrypted: give the server an unencrypted key (a file only "
            "its user can read)"
        )

    return refuse


def server_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The ssl context for the listener (TLS 1.2+, ALPN h2), or None without ``tls_cert``."""
    if not config.tls_cert:
        return None
    cert, key = Path(config.tls_cert), Path(config.tls_key or config.tls_cert)
    _readable("tls_cert", cert)
    _readable("tls_key", key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_CIPHERS)
    context.set_alpn_protocols(["h2"])
    try:
        context.load_cert_chain(cert, key, password=_no_password(key))
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise InvalidConfigurationError(
                f"tls_key {key} does not match the certificate in tls_cert {cert}"
            ) from None
        raise InvalidConfigurationError(
            f"tls_cert {cert} and tls_key {key} must be a PEM certificate and its PEM private "
            f"key (unencrypted): {exc.reason or exc}"
        ) from None
    if config.tls_client_ca:
        client_ca = Path(config.tls_client_ca)
        _readable("tls_client_ca", client_ca)
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise InvalidConfigurationError(
                f"tls_client_ca {client_ca} must hold PEM CA certificates: {exc.reason or exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
