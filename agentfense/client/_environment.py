"""Configuration from the environment: what the SDK uses where the caller names nothing.

An explicit argument always wins; then the variable; then the built-in default. An empty
variable counts as unset, as in a shell's ``AGENTFENSE_ENDPOINT= python agent.py``.
"""

from __future__ import annotations

import os

from .._transport import DEFAULT_ENDPOINT, parse_endpoint
from ..errors import InvalidConfigurationError
from ..types import TLSConfig

ENDPOINT_VARIABLE = "AGENTFENSE_ENDPOINT"
TLS_CA_VARIABLE = "AGENTFENSE_TLS_CA"
TLS_CERT_VARIABLE = "AGENTFENSE_TLS_CLIENT_CERT"
TLS_KEY_VARIABLE = "AGENTFENSE_TLS_CLIENT_KEY"
API_KEY_VARIABLE = "AGENTFENSE_API_KEY"


def endpoint_or_configured(endpoint: str | None) -> str:
    """``endpoint`` if given, else ``$AGENTFENSE_ENDPOINT``, else ``localhost:9000``.

    A malformed variable is refused here, in a sentence that names it, rather than at the
    first call as an endpoint the caller never wrote."""
    if endpoint is not None:
        return endpoint
    configured = os.environ.get(ENDPOINT_VARIABLE, "")
    if not configured:
        return DEFAULT_ENDPOINT
    try:
        parse_endpoint(configured)
    except InvalidConfigurationError as exc:
        raise InvalidConfigurationError(f"the variable {ENDPOINT_VARIABLE}: {exc}") from None
    return configured


def api_key_or_configured(api_key: str | None) -> str | None:
    """``api_key`` if given (``""``: send none), else ``$AGENTFENSE_API_KEY``, else None (the
    caller then looks for the local owner's token file). A key that cannot be a header value
    is refused in a sentence that does not repeat it."""
    where = "api_key"
    if api_key is None:
        api_key, where = (
            os.environ.get(API_KEY_VARIABLE) or None,
            f"the variable {API_KEY_VARIABLE}",
        )
    if api_key is not None and (
        not isinstance(api_key, str)
        or not api_key.isascii()
        or not all(c.isprintable() and not c.isspace() for c in api_key)
    ):
        raise InvalidConfigurationError(
            f"{where} must be the printable text of a token, without spaces"
        )
    return api_key


def tls_or_configured(endpoint: str, secure: bool, tls: TLSConfig | None) -> TLSConfig | None:
    """The TLS to use with ``endpoint``: ``tls`` if given; else, for a ``host:port``
    endpoint, the ``AGENTFENSE_TLS_*`` variables when one is set (a CA bundle's path, a
    client certificate's and its key's); else the system's trust store when ``secure``; else
    none. A unix socket takes no TLS from the variables (its file mode decides who
    connects); ``secure=True`` with one is refused when the connection opens."""
    if tls is not None:
        if not isinstance(tls, TLSConfig):
            raise InvalidConfigurationError(f"tls must be a TLSConfig, not {type(tls).__name__}")
        return tls
    ca, cert, key = (
        os.environ.get(name) or None
        for name in (TLS_CA_VARIABLE, TLS_CERT_VARIABLE, TLS_KEY_VARIABLE)
    )
    if (ca or cert or key) and (secure or not endpoint.startswith("unix:")):
        if key and not cert:
            raise InvalidConfigurationError(
                f"the variable {TLS_KEY_VARIABLE} needs {TLS_CERT_VARIABLE} beside it"
            )
        return TLSConfig(ca=ca, cert=cert, key=key)
    return TLSConfig() if secure else None
