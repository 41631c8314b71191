"""Who is calling: the tenant of the RPC being served, and what that tenant may see.

The gRPC layer (``_grpc/authentication.py``) sets the tenant once per call, before the handler
runs, from the call's token (or :data:`~agentfense.server.tokens.LOCAL_TENANT` when the server
runs with ``auth = "none"``). The context variable follows the call into the task groups its
handler opens.

Isolation by tenant rests on one rule, applied where every object is found: a lookup by id
(``CodebaseStore``, ``SandboxTable``, ``SessionRegistry``) answers "not found" for an object
whose tenant is not the caller's, exactly as for an id that does not exist, and a listing
leaves such objects out (:func:`may_see`). So no handler can forget the check: it has no other
way to reach an object. Outside a call (the server's own tasks: expiry, shutdown, a view lost)
everything is visible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from .tokens import LOCAL_TENANT

_TENANT: ContextVar[str] = ContextVar("agentfense_tenant")


def current_tenant() -> str:
    """The tenant of the call being served; ``LookupError`` outside a call."""
    return _TENANT.get()


def creating_tenant() -> str:
    """Whose a new object is: the calling tenant's, or (the server's own work, tests that
    drive the stores directly) the local owner's."""
    return _TENANT.get(LOCAL_TENANT)


def may_see(tenant: str) -> bool:
    """Whether the caller may see an object of ``tenant`` (always, outside a call)."""
    caller = _TENANT.get(None)
    return caller is None or caller == tenant


@contextlib.contextmanager
def calling_as(tenant: str) -> Iterator[None]:
    """Serve the block as ``tenant`` (the gRPC layer's, once authenticated; and tests')."""
    reset = _TENANT.set(tenant)
    try:
        yield
    finally:
        _TENANT.reset(reset)
