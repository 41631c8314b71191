"""The error's kind on the wire: a ``google.rpc.Status`` in ``grpc-status-details-bin`` with
one ``google.rpc.ErrorInfo`` whose ``reason`` is the ``SandboxError`` class's ``reason``.

One grpclib status-details codec, given to the server and to the client's channel: the
server raises ``GRPCError(status, message, details=reason)``, the client finds the reason in
``GRPCError.details`` (None when the server sent none, as upstream's does, or something it
cannot read: details are a hint, never a reason to fail a call).
"""

from __future__ import annotations

import betterproto.lib.google.protobuf as wellknown
from grpclib.const import Status
from grpclib.encoding.base import StatusDetailsCodecBase

from ._proto.sandbox import v1 as pb

ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
DOMAIN = "agentfense"
MAX_REASON = 64


class ReasonCodec(StatusDetailsCodecBase):
    """Encodes a reason (``str``) as status details, and decodes it back (or None)."""

    def encode(self, status: Status, message: str | None, details: object) -> bytes:
        info = pb.ErrorInfo(reason=str(details)[:MAX_REASON], domain=DOMAIN)
        packed = wellknown.Any(type_url=ERROR_INFO_TYPE, value=bytes(info))
        return bytes(pb.ErrorStatus(code=status.value, message=message or "", details=[packed]))

    def decode(self, status: Status, message: str | None, data: bytes) -> str | None:
        try:
            details = pb.ErrorStatus().parse(data).details
            for packed in details:
                if packed.type_url == ERROR_INFO_TYPE:
                    info = pb.ErrorInfo().parse(packed.value)
                    reason: str = info.reason
                    if info.domain == DOMAIN and 0 < len(reason) <= MAX_REASON:
                        return reason
        except Exception:  # (betterproto raises several kinds on bad bytes)
            return None
        return None
