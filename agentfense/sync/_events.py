"""Sync ``EventStream``: a sandbox's events as an iterator."""

from __future__ import annotations

from types import TracebackType
from typing import final

from .._construction import NoPublicConstructor
from .._transport import run_blocking
from ..client._events import EventStream as AsyncEventStream
from ..types import SandboxEvent


async def _next_event(stream: AsyncEventStream) -> SandboxEvent | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


@final
class EventStream(metaclass=NoPublicConstructor):
    """What a sandbox's commands do to its files, and what its permissions refuse:
    ``with sandbox.events() as events: for event in events: ...`` (see the async one)."""

    _obtained_from = "use `with sandbox.events() as events`"

    def __init__(self, stream: AsyncEventStream) -> None:
        self._async = stream

    def __enter__(self) -> EventStream:
        run_blocking(self._async.__aenter__)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run_blocking(self._async.__aexit__, exc_type, exc, tb)

    def close(self) -> None:
        """Stop watching."""
        run_blocking(self._async.aclose)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> SandboxEvent:
        event = run_blocking(_next_event, self._async)
        if event is None:
            raise StopIteration
        return event
