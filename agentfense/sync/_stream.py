"""Sync ``ExecStream``: a streamed command's output as an iterator, then its result."""

from __future__ import annotations

from types import TracebackType
from typing import final

from .._construction import NoPublicConstructor
from .._transport import run_blocking
from ..client._stream import ExecStream as AsyncExecStream
from ..types import ExecResult, OutputChunk


async def _next_chunk(stream: AsyncExecStream) -> OutputChunk | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


@final
class ExecStream(metaclass=NoPublicConstructor):
    """Output chunks of a running command, tagged stdout/stderr, as they are produced.

    ``with sandbox.exec_stream(cmd) as stream: for chunk in stream: ...``; then
    ``stream.result`` holds the exit code. Leaving the block early cancels the command.
    """

    _obtained_from = "use `with sandbox.exec_stream(command) as stream`"

    def __init__(self, stream: AsyncExecStream) -> None:
        self._async = stream

    @property
    def result(self) -> ExecResult | None:
        """The exit code and duration, once the stream has ended (stdout/stderr empty)."""
        return self._async.result

    @property
    def exit_code(self) -> int | None:
        """The command's exit code once the stream has ended, else None."""
        return self._async.exit_code

    def __enter__(self) -> ExecStream:
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
        """Stop reading; a command still running is cancelled (the server kills it)."""
        run_blocking(self._async.aclose)

    def __iter__(self) -> ExecStream:
        return self

    def __next__(self) -> OutputChunk:
        chunk = run_blocking(_next_chunk, self._async)
        if chunk is None:
            raise StopIteration
        return chunk

    def collect(self) -> ExecResult:
        """Read the stream to its end; the result with both streams joined in."""
        return run_blocking(self._async.collect)
