"""``EventStream``: a sandbox's events (``sandbox.events()``) as an async iterator."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import final

from .._construction import NoPublicConstructor
from .._convert import events_from_pb
from .._proto.sandbox import v1 as pb
from ..types import SandboxEvent

StreamOpener = Callable[[], AbstractAsyncContextManager[AsyncIterator[pb.EventBatch]]]


@final
class EventStream(metaclass=NoPublicConstructor):
    """What a sandbox's commands do to its files, and what its permissions refuse, as it
    happens: ``async with sandbox.events() as events: async for event in events: ...``.

    Entering the block waits until the server records: everything done after it is seen.
    The stream ends when the sandbox is destroyed; leaving the block stops it. A watcher
    that falls more than 1,024 events behind gets one ``lost`` event saying how many it
    missed, then the oldest the server kept (docs/review.md).
    """

    _obtained_from = "use `async with sandbox.events() as events`"

    def __init__(self, open_stream: StreamOpener) -> None:
        self._open_stream = open_stream
        self._context: AbstractAsyncContextManager[AsyncIterator[pb.EventBatch]] | None = None
        self._batches: AsyncIterator[pb.EventBatch] | None = None
        self._ready: deque[SandboxEvent] = deque()
        self._done = False

    async def __aenter__(self) -> EventStream:
        if self._context is None and not self._done:
            self._context = self._open_stream()
            self._batches = await self._context.__aenter__()
            try:  # the first batch: the watch has begun (empty unless resumed)
                self._ready.extend(events_from_pb(await self._batches.__anext__()))
            except BaseException:
                await self.aclose()
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching."""
        context, self._context = self._context, None
        self._done = True
        if context is not None:
            await context.__aexit__(None, None, None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SandboxEvent:
        await self.__aenter__()
        while not self._ready:
            if self._done or self._batches is None:
                raise StopAsyncIteration
            try:
                self._ready.extend(events_from_pb(await self._batches.__anext__()))
            except BaseException:  # (its end, a failure, a cancellation: the watch is over)
                await self.aclose()
                raise
        return self._ready.popleft()
