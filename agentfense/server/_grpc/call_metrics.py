"""Every answered call counted by method and gRPC status code (``agentfense_grpc_requests``).

A handler that returns is OK; one that raises a ``GRPCError`` (every refusal, through the
one error mapper) is that error's code; one cancelled (its client went away, or its deadline
passed) is CANCELLED; anything else grpclib answers UNKNOWN. Calls grpclib refuses before a
handler runs (an unknown method, a bad content type) are not counted: their method names
are the client's to choose, and no label may be.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from grpclib.exceptions import GRPCError, StreamTerminatedError

from ..metrics import ServerMetrics
from .layers import Layer


def _counted(
    func: Callable[[Any], Awaitable[None]], method: str, metrics: ServerMetrics
) -> Callable[[Any], Awaitable[None]]:
    async def handler(stream: Any) -> None:
        code = "UNKNOWN"
        try:
            await func(stream)
            code = "OK"
        except GRPCError as exc:
            code = exc.status.name
            raise
        except StreamTerminatedError:  # (the client reset the stream)
            code = "CANCELLED"
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):  # the call's cancellation
                code = "CANCELLED"
            raise
        finally:
            metrics.rpcs.labels(method, code).inc()

    return handler


def call_metrics(service: Any, metrics: ServerMetrics) -> Layer:
    """``service`` (a grpclib handler object) with each call counted in ``metrics``, by
    ``Service/Method``."""
    return Layer(service, lambda path, h: _counted(h.func, path.rsplit(".", 1)[-1], metrics))
