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

import grpclib.const
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ..metrics import ServerMetrics


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


class CallMetrics:
    """``service`` (a grpclib handler object) with each call counted in ``metrics``."""

    def __init__(self, service: Any, metrics: ServerMetrics) -> None:
        self._service = service
        self._metrics = metrics

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = self._service.__mapping__()
        return {
            path: grpclib.const.Handler(
                _counted(h.func, path.rsplit(".", 1)[-1], self._metrics),
                h.cardinality,
                h.request_type,
                h.reply_type,
            )
            for path, h in mapping.items()
        }
