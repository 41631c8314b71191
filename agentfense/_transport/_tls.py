"""The client's TLS: the ssl context a :class:`TLSConfig` makes, and a sentence for each way
a TLS connection fails (a raw ssl error says the OpenSSL reason; ours says what to fix)."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

from agentfense.errors import InvalidConfigurationError
from agentfense.types import TLSConfig

# As grpclib's default context: what HTTP/2 allows over TLS 1.2 (TLS 1.3's suites are apart).
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"

# OpenSSL's X509_V_ERR_* codes of a refused server certificate.
_EXPIRED, _NOT_YET_VALID = 10, 9
_UNTRUSTED = {18, 19, 20, 21}  # self-signed, self-signed in chain, issuer unknown, unverifiable
_WRONG_NAME = {62, 64}  # hostname mismatch, IP address mismatch


def _readable(what: str, path: str | os.PathLike[str]) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise InvalidConfigurationError(
            f"{what} {os.fspath(path)} cannot be read: {exc.strerror or exc}"
        ) from None


@dataclass(frozen=True)
class ClientTLS:
    """A connection's ssl context, and whether it shows the server a client certificate."""

    context: ssl.SSLContext
    shows_certificate: bool

    def hung_up(self) -> str:
        """Why a server hangs up right after the handshake, before its first HTTP/2 frame
        (TLS 1.3 checks the client's certificate then, and its alert often loses the race
        with our first write)."""
        if self.shows_certificate:
            return (
                "the server closed the TLS connection before answering: it refused the "
                "client certificate (not signed by a CA in its tls_client_ca, or expired)"
            )
        return (
            "the server closed the TLS connection before answering: it requires a client "
            "certificate (mutual TLS) and none was given: TLSConfig(cert=..., key=...) or "
            "AGENTFENSE_TLS_CLIENT_CERT"
        )


def client_tls(tls: TLSConfig) -> ClientTLS:
    """The :class:`ClientTLS` of ``tls``."""
    return ClientTLS(client_context(tls), tls.cert is not None)


def _no_password() -> str:
    """What OpenSSL asks for an encrypted key's password (it would prompt on the terminal)."""
    raise InvalidConfigurationError("tls.key is encrypted: give an unencrypted key")


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """TLS 1.2+, ALPN h2, the server checked against ``tls.ca`` (else the system's store),
    ``tls.cert`` shown to it."""
    if tls.ca is not None and not isinstance(tls.ca, bytes):
        _readable("tls.ca", tls.ca)
    for what, path in (("tls.cert", tls.cert), ("tls.key", tls.key)):
        if path is not None:
            _readable(what, path)
    try:
        if isinstance(tls.ca, bytes):
            context = ssl.create_default_context(cadata=tls.ca.decode("ascii"))
        else:
            context = ssl.create_default_context(cafile=tls.ca)
    except UnicodeDecodeError:
        raise InvalidConfigurationError("tls.ca holds bytes that are not PEM text") from None
    except ssl.SSLError as exc:
        raise InvalidConfigurationError(
            f"tls.ca must hold PEM CA certificates: {exc.reason or exc}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_CIPHERS)
    context.set_alpn_protocols(["h2"])
    if tls.cert is not None:
        try:
            context.load_cert_chain(tls.cert, tls.key, password=_no_password)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise InvalidConfigurationError(
                    "tls.key does not match the client certificate in tls.cert"
                ) from None
            raise InvalidConfigurationError(
                "tls.cert and tls.key must be a PEM certificate and its PEM private key "
                f"(unencrypted): {exc.reason or exc}"
            ) from None
    return context


def _refused_certificate(exc: ssl.SSLCertVerificationError, server: str) -> str:
    code = exc.verify_code
    if code == _EXPIRED:
        return f"the server's TLS certificate has expired ({server})"
    if code == _NOT_YET_VALID:
        return f"the server's TLS certificate is not valid yet ({server})"
    if code in _UNTRUSTED:
        return (
            f"the server's TLS certificate is not signed by a CA this client trusts "
            f"({exc.verify_message}): give its CA as TLSConfig(ca=...) or AGENTFENSE_TLS_CA"
        )
    if code in _WRONG_NAME:
        return (
            f"the server's TLS certificate does not name the host of {server} (hostname "
            "mismatch): connect by a name the certificate lists"
        )
    return f"the server's TLS certificate was refused: {exc.verify_message}"


# What a server's TLS alert says about our client certificate (OpenSSL's reason names).
_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": (
        "the server requires a client certificate (mutual TLS) and none was given: "
        "TLSConfig(cert=..., key=...) or AGENTFENSE_TLS_CLIENT_CERT"
    ),
    "SSLV3_ALERT_HANDSHAKE_FAILURE": (
        "the server refused the TLS handshake (it may require a client certificate: "
        "TLSConfig(cert=..., key=...))"
    ),
    "TLSV1_ALERT_UNKNOWN_CA": (
        "the server refused the client certificate: it is not signed by a CA the server "
        "trusts (its tls_client_ca)"
    ),
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused the client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server refused the client certificate: it has expired",
    "WRONG_VERSION_NUMBER": (
        "the server does not speak TLS (it has no tls_cert): connect without TLS"
    ),
}


def tls_failure(exc: BaseException, server: str) -> str | None:
    """What went wrong, in a sentence, when ``exc`` is a TLS failure; else None."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _refused_certificate(exc, server)
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        return _ALERTS.get(reason, f"the TLS connection failed: {reason or exc}")
    return None
