"""The largest response message the SDK takes (grpclib has no such setting).

grpclib reads a message's 5-byte prefix, then buffers the whole length it announces, up to
4 GiB, before anything looks at it: a server (or whatever answers on its address) could make
the client hold that much. The read of a longer body is refused before a byte of it is
buffered, with RESOURCE_EXHAUSTED (``ResourceLimitExceededError``) and a sentence. The limit
is far above what a server sends (an exec's output is capped by the server's
``max_output_bytes``, 16 MiB per stream by default).
"""

from __future__ import annotations

from typing import Any

import grpclib.const
from grpclib.exceptions import GRPCError

from .._bounded_reads import BoundedReads

MAX_RECEIVE_BYTES = 256 * 1024 * 1024


def bound_reads(stream: Any, most: int = MAX_RECEIVE_BYTES) -> None:
    """Bound what ``stream`` (a grpclib client Stream whose request is sent) reads per message."""

    def refuse(size: int) -> GRPCError:
        return GRPCError(
            grpclib.const.Status.RESOURCE_EXHAUSTED,
            f"the server sent a message of {size} bytes; the client takes at most {most}",
        )

    if not isinstance(stream._stream, BoundedReads):
        stream._stream = BoundedReads(stream._stream, most, refuse)
