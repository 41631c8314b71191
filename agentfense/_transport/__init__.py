"""Client transport: gRPC (grpclib) calls from asyncio or trio callers.

The only client package that imports grpclib or asyncio. Under asyncio, grpclib runs on the
caller's loop. Under trio, one private asyncio loop in one daemon thread owns the channels, and
a bridge maps cancellation both ways (a trio cancellation resets the HTTP/2 stream).
"""

from agentfense._transport._client import Transport as Transport
from agentfense._transport._client import cancel_again as cancel_again
from agentfense._transport._client import open_transport as open_transport
from agentfense._transport._endpoint import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT
from agentfense._transport._endpoint import Endpoint as Endpoint
from agentfense._transport._endpoint import parse_endpoint as parse_endpoint

__all__ = [
    "DEFAULT_ENDPOINT",
    "Endpoint",
    "Transport",
    "cancel_again",
    "open_transport",
    "parse_endpoint",
]
