"""A layer around every handler of a grpclib service: the one way the server wraps them
(the front door, the wire checks, the call metrics, the task a handler runs in)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const

Handler = Callable[[Any], Awaitable[None]]
Wrap = Callable[[str, grpclib.const.Handler], Handler]


def wrap_handlers(
    mapping: dict[str, grpclib.const.Handler], wrap: Wrap
) -> dict[str, grpclib.const.Handler]:
    """``mapping`` (a service's ``__mapping__``) with each handler replaced by
    ``wrap(path, handler)``, its cardinality and message types kept."""
    return {
        path: grpclib.const.Handler(wrap(path, h), h.cardinality, h.request_type, h.reply_type)
        for path, h in mapping.items()
    }


class Layer:
    """``service`` (a grpclib handler object) with every handler wrapped by ``wrap``."""

    def __init__(self, service: Any, wrap: Wrap) -> None:
        self._service = service
        self._wrap = wrap

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return wrap_handlers(self._service.__mapping__(), self._wrap)


def method_name(path: str) -> str:
    """``/sandbox.v1.SandboxService/Exec`` → ``Exec``."""
    return path.rsplit("/", 1)[-1]
