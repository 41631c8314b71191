"""What every request message must be before a handler sees it: small enough, and decodable.

* Size: grpclib has no maximum. It reads a message's 5-byte prefix, then buffers the whole
  length it announces (up to 4 GiB) before anything looks at it. Here the read of a message
  body longer than ``max_message_bytes`` is refused before a byte of it is buffered:
  RESOURCE_EXHAUSTED with a sentence naming the limit. Streams (uploads) are unaffected as
  long as each of their messages fits.
* Decoding: a message whose bytes do not decode (a string that is not UTF-8, a duration past
  what a ``timedelta`` holds, a truncated field, a field of the wrong wire type: see
  :mod:`._wire_shape`) or that leaves a oneof unset (a stream chunk that is neither metadata
  nor data) is the client's error, INVALID_ARGUMENT with a sentence, not an INTERNAL one.
* Decoding cost: betterproto takes ~0.2 ms per element of a repeated field, on the event
  loop that serves every client: 4 MiB of one-byte rules would hold the whole server for half
  a minute. A message's top-level fields are counted first (cheaply, stopping at the cap) and
  one with more than :data:`MAX_FIELDS` is refused undecoded; a large message is decoded in a
  worker thread, so other clients' calls go on meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ..._bounded_reads import BoundedReads
from ..._proto.sandbox import v1 as pb
from ..._repeated_memo import RepeatedMemo, read_varint
from ...errors import ResourceLimitExceededError
from .encoded import Encoded
from .errors import invalid, status_error
from .layers import Layer
from .wire_shape import oneof_fault, wire_fault

# The most top-level fields a request may hold: the most rules (4,096), labels (64) or
# environment variables (256) any request may carry, and its handful of other fields.
MAX_FIELDS = 4096 + 64 + 64
_DECODE_INLINE = 64 * 1024  # messages up to this size are decoded on the event loop
# A new sandbox's rules, decoded once per distinct set: most are a preset's (_repeated_memo).
# (Large messages are decoded in worker threads: the table takes a lock.)
_MEMOS = {pb.CreateSandboxRequest: RepeatedMemo(2, "permissions")}


def too_many_fields(data: bytes, most: int = MAX_FIELDS) -> bool:
    """Whether the protobuf message ``data`` has more than ``most`` top-level fields (its
    work stops at the field after ``most``, whatever the message's size)."""
    i = count = 0
    while i < len(data):
        key, i = read_varint(data, i)
        wire_type = key & 7
        if key < 0:
            return False
        if wire_type == 0:
            i = read_varint(data, i)[1]
        elif wire_type == 1:
            i += 8
        elif wire_type == 2:
            length, i = read_varint(data, i)
            i += max(length, 0)
        elif wire_type == 5:
            i += 4
        else:
            return False  # (groups, or no protobuf at all: the decoder refuses it)
        count += 1
        if count > most:
            return True
    return False


class _Malformed(ValueError):
    """A request's bytes that are not the message they are sent as (the sentence says why)."""


def _decode(codec: Any, data: bytes, message_type: type[Any]) -> Any:
    def check(checked: bytes) -> None:
        fault = wire_fault(checked, message_type)
        if fault is not None:
            raise _Malformed(fault)

    try:
        memo = _MEMOS.get(message_type)
        if memo is None:
            check(data)
            message = codec.decode(data, message_type)
        else:
            message = memo.decode(data, lambda raw: codec.decode(raw, message_type), check)
    except RuntimeError as exc:  # betterproto's compiled codec: bytes wire_fault let through
        raise _Malformed(f"the bytes do not decode ({exc})") from None
    fault = oneof_fault(message)
    if fault is not None:
        raise _Malformed(fault)
    return message


class _Undecoded:
    """What the codec hands grpclib: the message's bytes, decoded later (maybe in a thread)."""

    __slots__ = ("data", "type")

    def __init__(self, data: bytes, message_type: type[Any]) -> None:
        self.data = data
        self.type = message_type


class _DeferredCodec:
    """grpclib's codec, but decoding is left to :func:`_checked` (and counts fields first)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.__content_subtype__ = inner.__content_subtype__

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, Encoded):  # (a large reply, encoded in a worker thread)
            return message.data
        data: bytes = self._inner.encode(message, message_type)
        return data

    def decode(self, data: bytes, message_type: Any) -> _Undecoded:
        if too_many_fields(data):
            raise invalid(
                f"the {message_type.__name__} has more than {MAX_FIELDS} fields; no request "
                "needs that many (see the limits on rules, labels and env)"
            )
        return _Undecoded(data, message_type)


def _checked(
    func: Callable[[Any], Awaitable[None]], most: int, type_name: str
) -> Callable[[Any], Awaitable[None]]:
    def too_large(size: int) -> Exception:
        return status_error(
            ResourceLimitExceededError(
                f"a request message of {size} bytes is larger than this server accepts "
                f"({most} bytes, max_message_bytes); send large content in chunks"
            )
        )

    async def handler(stream: Any) -> None:
        stream._stream = BoundedReads(stream._stream, most, too_large)  # grpclib's Stream
        codec = stream._codec
        stream._codec = _DeferredCodec(codec)
        receive = stream.recv_message

        async def recv_message() -> Any:
            try:
                raw = await receive()
                if raw is None:
                    return None
                if len(raw.data) <= _DECODE_INLINE:
                    return _decode(codec, raw.data, raw.type)
                return await anyio.to_thread.run_sync(_decode, codec, raw.data, raw.type)
            except (ValueError, OverflowError, IndexError, TypeError, EOFError) as exc:
                raise invalid(
                    f"the request is not a valid {type_name} message: {exc}"[:500]
                ) from None

        stream.recv_message = recv_message  # (what iterating the stream calls too)
        try:
            await func(stream)
        finally:
            # It refers to the stream (through ``receive``): left in place, every call's
            # stream would be a cycle that only a full garbage collection frees.
            del stream.recv_message

    return handler


def wire_checks(service: Any, most: int) -> Layer:
    """``service`` (a grpclib handler object) with request messages of at most ``most`` bytes
    that decode."""
    return Layer(service, lambda _, h: _checked(h.func, most, h.request_type.__name__))
