"""Running one command to completion: stdin in, both streams out, a deadline, a kill.

Generic over runtimes (it only needs ``runtimes.base.Process``). Output is captured up to a cap
per stream (then truncated with a marker, and the rest read and dropped so the command never
blocks on a full pipe), or handed chunk by chunk to ``on_output`` when streaming.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio

from ..runtimes._pipes import write_all
from ..runtimes.base import Process
from ..types import OutputStream

TRUNCATION_MARKER = (
    "\n[agentfense: output truncated after {limit} bytes; {dropped} bytes dropped]\n"
)
_READ_SIZE = 1 << 16

OnOutput = Callable[[OutputStream, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Outcome:
    stdout: bytes
    stderr: bytes
    exit_code: int
    duration: float
    timed_out: bool
    limit_exceeded: str = ""  # the sandbox's resource limit the command ran into, if any
    detail: str = ""  # what became of the rest of a command cut short, as a sentence
    network_denied: tuple[str, ...] = ()  # what the sandbox's proxy refused meanwhile


def with_limits(
    outcome: Outcome, before: Mapping[str, int], after: Mapping[str, int], *, disk: bool
) -> Outcome:
    """``outcome``, marked with the first limit that struck between ``before`` and ``after``
    (or ``disk``: a write refused for the sandbox's delta limit)."""
    for name in ("memory", "pids"):
        if after.get(name, 0) > before.get(name, 0):
            return dataclasses.replace(outcome, limit_exceeded=name)
    if disk:
        return dataclasses.replace(outcome, limit_exceeded="disk")
    return outcome


class OutputCapture:
    """What a stream wrote, kept up to ``limit`` bytes; the rest counted and marked."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            kept = data[:room]
            self.parts.append(kept)
            self.size += len(kept)
        self.dropped += max(0, len(data) - max(room, 0))

    def value(self) -> bytes:
        data = b"".join(self.parts)
        if self.dropped:
            marker = TRUNCATION_MARKER.format(limit=self.limit, dropped=self.dropped)
            data += marker.encode()
        return data


async def _feed_stdin(fd: int, data: bytes) -> None:
    try:
        await write_all(fd, data)  # a command that does not read its stdin may go first
    finally:
        os.close(fd)


def _read_available(fd: int) -> bytes | None:
    """Data now in the pipe; b"" at end of file; None when nothing is there yet."""
    try:
        return os.read(fd, _READ_SIZE)
    except BlockingIOError:
        return None


async def run_to_completion(
    process: Process,
    *,
    stdin: bytes,
    timeout: float | None,
    max_output: int,
    on_output: OnOutput | None = None,
) -> Outcome:
    """Run ``process`` to its end (or its deadline) and collect what it wrote."""
    started = time.monotonic()
    captures = {
        OutputStream.STDOUT: OutputCapture(max_output),
        OutputStream.STDERR: OutputCapture(max_output),
    }
    fds = {OutputStream.STDOUT: process.stdout_fd, OutputStream.STDERR: process.stderr_fd}
    open_streams = set(fds)

    async def deliver(stream: OutputStream, data: bytes) -> None:
        if on_output is not None:
            await on_output(stream, data)
        else:
            captures[stream].add(data)

    async def pump(stream: OutputStream) -> None:
        fd = fds[stream]
        while True:
            data = _read_available(fd)
            if data is None:
                await anyio.wait_readable(fd)
                continue
            if not data:
                open_streams.discard(stream)
                return
            await deliver(stream, data)

    exit_code: int | None = None
    finished = False
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_feed_stdin, process.stdin_fd, stdin)
            for stream in fds:
                tg.start_soon(pump, stream)
            with anyio.move_on_after(timeout if timeout and timeout > 0 else float("inf")):
                exit_code = await process.wait()
            tg.cancel_scope.cancel()
        if exit_code is None:
            await process.kill()
        # Everything the command itself wrote is in the pipes now (it has exited); whatever
        # its background jobs write later is theirs. Take what is there and stop.
        for stream in list(open_streams):
            while data := _read_available(fds[stream]):
                await deliver(stream, data)
        finished = True
    finally:
        if not finished:
            with anyio.CancelScope(shield=True):
                await process.kill()
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        if finished and exit_code is not None:
            await process.release()
    return Outcome(
        stdout=captures[OutputStream.STDOUT].value(),
        stderr=captures[OutputStream.STDERR].value(),
        exit_code=137 if exit_code is None else exit_code,
        duration=time.monotonic() - started,
        timed_out=exit_code is None,
    )
