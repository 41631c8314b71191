"""The front door of every RPC: who is calling (``authorization: Bearer <token>``), and the
audit line of what they asked and how it ended.

With ``auth = "token"`` a call without the header, or with a token the store does not know
(revoked, mistyped, another server's), is refused UNAUTHENTICATED before its handler runs or
a message of it is read; the sentence says "missing" or "not valid", nothing more. With
``auth = "none"`` every call is the local owner's. The handler then runs as the token's
tenant (:func:`agentfense.server.callers.current_tenant`).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, cast

import betterproto
import grpclib.const
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ...errors import AuthenticationError, ConnectionError, InvalidConfigurationError
from ..audit_log import AuditLog
from ..callers import calling_as
from ..tokens import LOCAL_TENANT, TokenStore
from .errors import status_error

log = logging.getLogger("agentfense.server")

_MISSING = AuthenticationError(
    "this server requires an API token: pass api_key= or set AGENTFENSE_API_KEY "
    "(the header 'authorization: Bearer <token>' is missing)"
)
_NOT_VALID = AuthenticationError("the API token is not valid (unknown or revoked)")


def _peer(stream: Any) -> str:
    address = stream.peer.addr()
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    sock = stream.peer._transport.get_extra_info("socket")  # grpclib's Peer: the transport's
    try:
        pid, uid, _ = struct.unpack(
            "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        )
    except (AttributeError, OSError):
        return "unix"
    return f"unix:uid={uid},pid={pid}"


def _ids(message: Any, into: dict[str, str | int]) -> None:
    """The object ids a request names (and a command's length, never its text)."""
    if not isinstance(message, betterproto.Message):
        return
    for field in dataclasses.fields(cast(Any, message)):
        name = field.name
        if name == "command":
            into["command_bytes"] = len(str(getattr(message, name)).encode())
        elif name.endswith("_id") and name != "owner_id":
            value = getattr(message, name)
            if isinstance(value, str) and value:
                into[name] = value
        elif name == "metadata":
            _ids(getattr(message, name), into)


def _authenticate(stream: Any, tokens: TokenStore | None) -> str:
    if tokens is None:
        return LOCAL_TENANT
    header = (stream.metadata or {}).get("authorization", "")
    scheme, _, token = str(header).partition(" ")
    if not header:
        raise status_error(_MISSING)
    if scheme.lower() != "bearer" or not token.strip():
        raise status_error(_NOT_VALID)
    try:
        tenant = tokens.tenant_of(token.strip())
    except InvalidConfigurationError as exc:  # a damaged store: the operator's to mend
        log.warning("cannot check API tokens: %s", exc)
        raise status_error(ConnectionError("the server cannot check API tokens now")) from None
    if tenant is None:
        raise status_error(_NOT_VALID)
    return tenant


def _front_door(
    func: Callable[[Any], Awaitable[None]],
    action: str,
    tokens: TokenStore | None,
    audit: AuditLog | None,
) -> Callable[[Any], Awaitable[None]]:
    async def handler(stream: Any) -> None:
        tenant: str | None = None
        ids: dict[str, str | int] = {}
        outcome = "UNKNOWN"
        if audit is not None:
            receive, send = stream.recv_message, stream.send_message

            async def recv_message() -> Any:
                message = await receive()
                if not ids:
                    _ids(message, ids)
                return message

            async def send_message(message: Any, **kwargs: Any) -> None:
                created = getattr(message, "id", None)
                if action.startswith("Create") and isinstance(created, str) and created:
                    ids["created"] = created
                await send(message, **kwargs)

            stream.recv_message, stream.send_message = recv_message, send_message
        try:
            tenant = _authenticate(stream, tokens)
            with calling_as(tenant):
                await func(stream)
            outcome = "OK"
        except GRPCError as exc:
            outcome = exc.status.name
            raise
        except StreamTerminatedError:
            outcome = "CANCELLED"
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):
                outcome = "CANCELLED"
            raise
        finally:
            if audit is not None:
                audit.record(
                    tenant=tenant, action=action, ids=ids, outcome=outcome, peer=_peer(stream)
                )

    return handler


class FrontDoor:
    """``service`` (a grpclib handler object) with each call authenticated by ``tokens``
    (None: ``auth = "none"``) and written to ``audit`` (None: no audit log)."""

    def __init__(self, service: Any, tokens: TokenStore | None, audit: AuditLog | None) -> None:
        self._service = service
        self._tokens = tokens
        self._audit = audit

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = self._service.__mapping__()
        return {
            path: grpclib.const.Handler(
                _front_door(h.func, path.rsplit("/", 1)[-1], self._tokens, self._audit),
                h.cardinality,
                h.request_type,
                h.reply_type,
            )
            for path, h in mapping.items()
        }
