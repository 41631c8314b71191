"""Whether a request's bytes are the message they claim to be, before betterproto reads them.

betterproto decodes leniently: a field sent with another wire type than its declaration's (a
string as a varint, a duration as a number, a bool as bytes) comes out as a value of the wrong
Python type, which a handler then trips over (UNKNOWN "Internal Server Error"); a truncated
key or varint raises ``EOFError``. :func:`wire_fault` walks the message (and every message
field inside it, recursively) and says, as a sentence, what is wrong: a truncated field, a
field number 0, a wire type that is not protobuf's (or a group), a field of ours with the
wrong wire type, more fields than :data:`MAX_ALL_FIELDS`. Fields this server does not know
are skipped as protobuf says they must be.
:func:`oneof_fault` says when a message leaves one of its oneofs unset (a stream chunk that
is neither metadata nor data), which no request of this API means to do.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import betterproto

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_WIRE = {
    _VARINT: "as a varint",
    _FIXED64: "as 64 bits",
    _LEN: "length-delimited",
    _FIXED32: "as 32 bits",
}
_VARINT_TYPES = frozenset(
    {
        betterproto.TYPE_ENUM,
        betterproto.TYPE_BOOL,
        betterproto.TYPE_INT32,
        betterproto.TYPE_INT64,
        betterproto.TYPE_UINT32,
        betterproto.TYPE_UINT64,
        betterproto.TYPE_SINT32,
        betterproto.TYPE_SINT64,
    }
)
_FIXED32_TYPES = frozenset(
    {betterproto.TYPE_FLOAT, betterproto.TYPE_FIXED32, betterproto.TYPE_SFIXED32}
)
_FIXED64_TYPES = frozenset(
    {betterproto.TYPE_DOUBLE, betterproto.TYPE_FIXED64, betterproto.TYPE_SFIXED64}
)
_NESTED = {datetime: betterproto._Timestamp, timedelta: betterproto._Duration}


# The most fields a request may hold, nested ones included: the most rules (4,096 of 5 fields
# each with their own key), labels and environment variables (3 each), with room to spare.
# Counting stops there: betterproto takes tens of seconds over a few MiB of tiny fields inside
# one nested message (unknown ones the longest), holding the interpreter every client shares.
MAX_ALL_FIELDS = 32 * 1024


class _Fault(Exception):
    pass


class _Count:
    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields = 0


def _varint(data: bytes, i: int, end: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while i < end:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise _Fault(f"{what} is a varint longer than 10 bytes")
    raise _Fault(f"{what} is cut off (a truncated varint)")


def _wire_type(proto_type: str) -> int:
    if proto_type in _VARINT_TYPES:
        return _VARINT
    if proto_type in _FIXED32_TYPES:
        return _FIXED32
    if proto_type in _FIXED64_TYPES:
        return _FIXED64
    return _LEN


def _walk(
    data: bytes, start: int, end: int, message_type: type[Any], where: str, count: _Count
) -> None:
    meta = message_type._betterproto
    i = start
    while i < end:
        count.fields += 1
        if count.fields > MAX_ALL_FIELDS:
            raise _Fault(
                f"it has more than {MAX_ALL_FIELDS} fields, nested ones counted; no request"
                " needs that many (see the limits on rules, labels and env)"
            )
        key, i = _varint(data, i, end, f"a field key of {where}")
        payload = i  # where the field's bytes start (past its length, for a LEN field)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Fault(f"{where} has a field numbered 0, which protobuf does not allow")
        name = meta.field_name_by_number.get(number)
        field = f"field {name or number} of {where}"
        if wire == _VARINT:
            i = _varint(data, i, end, field)[1]
        elif wire in (_FIXED64, _FIXED32):
            i += 8 if wire == _FIXED64 else 4
            if i > end:
                raise _Fault(f"{field} is cut off (fewer bytes than its wire type holds)")
        elif wire == _LEN:
            length, payload = _varint(data, i, end, f"the length of {field}")
            if length > end - payload:
                raise _Fault(f"{field} announces {length} bytes but only {end - payload} follow")
            i = payload + length
        else:
            raise _Fault(f"{field} has wire type {wire}, which is not one this API uses")
        if name is None:
            continue  # unknown fields are skipped, as protobuf says
        field_meta = meta.meta_by_field_name[name]
        expected = _wire_type(field_meta.proto_type)
        repeated = isinstance(meta.default_gen[name](), list)
        packed = repeated and expected != _LEN and wire == _LEN
        if wire != expected and not packed:
            raise _Fault(
                f"{field} ({field_meta.proto_type}) was sent {_WIRE[wire]}"
                f" rather than {_WIRE[expected]}"
            )
        if field_meta.proto_type in (betterproto.TYPE_MESSAGE, betterproto.TYPE_MAP):
            nested = meta.cls_by_field[name]
            nested = _NESTED.get(nested, nested)
            _walk(data, payload, i, nested, f"{where}.{name}", count)


def wire_fault(data: bytes, message_type: type[Any]) -> str | None:
    """What makes ``data`` not a valid ``message_type`` on the wire, or ``None``."""
    try:
        _walk(data, 0, len(data), message_type, message_type.__name__, _Count())
    except _Fault as fault:
        return str(fault)
    return None


def oneof_fault(message: Any) -> str | None:
    """Which oneof of ``message`` is left unset, as a sentence, or ``None``."""
    for group, members in type(message)._betterproto.oneof_field_by_group.items():
        if not betterproto.which_one_of(message, group)[0]:
            names = " or ".join(sorted(f.name for f in members))
            return f"the {type(message).__name__} sets none of {names} (its {group})"
    return None
