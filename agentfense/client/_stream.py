"""``ExecStream``: a streamed command's output as an async iterator, then its result."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import final

import betterproto

from .._construction import NoPublicConstructor
from .._convert import exec_result_from_pb
from .._proto.sandbox import v1 as pb
from ..errors import SandboxError
from ..types import ExecResult, OutputChunk, OutputStream

_KIND = {
    pb.ExecOutputOutputType.OUTPUT_TYPE_STDOUT: OutputStream.STDOUT,
    pb.ExecOutputOutputType.OUTPUT_TYPE_STDERR: OutputStream.STDERR,
}

StreamOpener = Callable[[], AbstractAsyncContextManager[AsyncIterator[pb.ExecOutput]]]


@final
class ExecStream(metaclass=NoPublicConstructor):
    """Output chunks of a running command, tagged stdout/stderr, as they are produced.

    ``async with sandbox.exec_stream(cmd) as stream: async for chunk in stream: ...``; after
    the last chunk, ``stream.result`` holds the exit code and duration (its stdout/stderr are
    empty: they were streamed). Leaving the block early cancels the command on the server.
    """

    _obtained_from = "use `async with sandbox.exec_stream(command) as stream`"

    def __init__(self, open_stream: StreamOpener) -> None:
        self._open_stream = open_stream
        self._context: AbstractAsyncContextManager[AsyncIterator[pb.ExecOutput]] | None = None
        self._messages: AsyncIterator[pb.ExecOutput] | None = None
        self._done = False
        self.result: ExecResult | None = None

    @property
    def exit_code(self) -> int | None:
        """The command's exit code once the stream has ended, else None."""
        return None if self.result is None else self.result.exit_code

    async def __aenter__(self) -> ExecStream:
        if self._context is None:
            self._context = self._open_stream()
            self._messages = await self._context.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading; a command still running is cancelled (the server kills it)."""
        context, self._context = self._context, None
        self._done = True
        if context is not None:
            await context.__aexit__(None, None, None)

    def __aiter__(self) -> ExecStream:
        return self

    async def __anext__(self) -> OutputChunk:
        if self._done:
            raise StopAsyncIteration
        await self.__aenter__()
        assert self._messages is not None
        try:
            while True:
                message = await self._messages.__anext__()
                if message.type in _KIND:
                    return OutputChunk(_KIND[message.type], message.data)
                if betterproto.serialized_on_wire(message.result):
                    self.result = exec_result_from_pb(message.result)
        except StopAsyncIteration:
            await self.aclose()
            raise
        except BaseException:
            await self.aclose()
            raise

    async def collect(self) -> ExecResult:
        """Read the stream to its end; the result with both streams joined in."""
        out: list[bytes] = []
        err: list[bytes] = []
        async with self:
            async for chunk in self:
                (out if chunk.stream is OutputStream.STDOUT else err).append(chunk.data)
        if self.result is None:
            raise SandboxError("the server ended the stream without the command's exit code")
        return ExecResult(
            stdout=b"".join(out).decode(errors="replace"),
            stderr=b"".join(err).decode(errors="replace"),
            exit_code=self.result.exit_code,
            duration=self.result.duration,
        )
