"""Who is calling: the tenant of the RPC being served.

The gRPC layer (``_grpc/authentication.py``) sets it once per call, before the handler runs,
from the call's token (or :data:`~agentfense.server.tokens.LOCAL_TENANT` when the server runs
with ``auth = "none"``). The service layer reads it with :func:`current_tenant`; the context
variable follows the call into the task groups its handler opens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_TENANT: ContextVar[str] = ContextVar("agentfense_tenant")


def current_tenant() -> str:
    """The tenant of the call being served; ``LookupError`` outside a call."""
    return _TENANT.get()


@contextlib.contextmanager
def calling_as(tenant: str) -> Iterator[None]:
    """Serve the block as ``tenant`` (the gRPC layer's, once authenticated; and tests')."""
    reset = _TENANT.set(tenant)
    try:
        yield
    finally:
        _TENANT.reset(reset)
