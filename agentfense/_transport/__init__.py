"""Client transport: gRPC (grpclib) calls from asyncio or trio callers, and the SDK's one
private event loop.

The only client package that imports grpclib or asyncio. Under asyncio, grpclib runs on the
caller's loop. Under trio, the SDK's private asyncio loop (one daemon thread) owns the
channels, and a bridge maps cancellation both ways (a trio cancellation resets the HTTP/2
stream). The same loop runs the calls of ``finishing()`` blocks under asyncio, and the sync
API (``run_blocking``).
"""

from agentfense._transport._client import Transport as Transport
from agentfense._transport._client import open_transport as open_transport
from agentfense._transport._endpoint import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT
from agentfense._transport._endpoint import Endpoint as Endpoint
from agentfense._transport._endpoint import parse_endpoint as parse_endpoint
from agentfense._transport._finishing import finishing as finishing
from agentfense._transport._loop_thread import check_not_async as check_not_async
from agentfense._transport._loop_thread import run_blocking as run_blocking

__all__ = [
    "DEFAULT_ENDPOINT",
    "Endpoint",
    "Transport",
    "check_not_async",
    "finishing",
    "open_transport",
    "parse_endpoint",
    "run_blocking",
]
