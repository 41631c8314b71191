"""Configuration from the environment: what the SDK uses where the caller names nothing.

An explicit argument always wins; then the variable; then the built-in default. An empty
variable counts as unset, as in a shell's ``AGENTFENSE_ENDPOINT= python agent.py``.
"""

from __future__ import annotations

import os

from .._transport import DEFAULT_ENDPOINT, parse_endpoint
from ..errors import InvalidConfigurationError

ENDPOINT_VARIABLE = "AGENTFENSE_ENDPOINT"


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
