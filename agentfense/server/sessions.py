"""Sessions: a persistent shell per session in a running sandbox (see ``shell_protocol``).

A session is one process of its sandbox (its own cgroup leaf on bwrap): the shell, and every
process its commands start. Commands run one at a time, in the order they arrive. Each
command's output is read up to its end marker; what background jobs write between commands
is dropped. A timeout (or the caller going away) stops the command whole: the processes it
started (those in the session now that were not there when it began) are killed and the
shell is interrupted, so the rest of its command line never runs (``shell_protocol``). A bash
that reports back stopped keeps its state; any other shell, one that reports the command ran
on to its end, or one that does not report back within a second, is closed with everything
in it. The outcome says which. ``exit`` closes the session; closing kills every process of
the session.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import SessionClosedError
from ..runtimes.base import Process
from ..types import OutputStream, SessionStatus
from . import shell_protocol as protocol
from .execution import OnOutput, Outcome, OutputCapture

# How long a killed command may take to hand its shell back before the session is closed.
_KILL_GRACE = 1.0
_START_TIMEOUT = 10.0

Chunk = tuple[OutputStream, bytes]


@dataclass(eq=False)
class _Command:
    """The command running now: its scanners and where its output goes."""

    token: tuple[str, str]
    send: MemoryObjectSendStream[Chunk]
    scanners: dict[OutputStream, protocol.MarkerScanner] = field(init=False)
    delivered: set[OutputStream] = field(default_factory=set)  # up to its end, handed on
    finished: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self.scanners = {
            OutputStream.STDOUT: protocol.MarkerScanner(self.token, with_status=True),
            OutputStream.STDERR: protocol.MarkerScanner(self.token, with_status=False),
        }

    @property
    def status(self) -> int | None:
        return self.scanners[OutputStream.STDOUT].status

    def delivered_all(self, stream: OutputStream) -> None:
        self.delivered.add(stream)
        if len(self.delivered) == len(self.scanners):
            self.finish()

    def finish(self) -> None:
        if not self.finished.is_set():
            self.send.close()
            self.finished.set()


class Session:
    """One shell. Create with :meth:`open`; its readers run in the given task group."""

    def __init__(self, ident: str, sandbox_id: str, process: Process, shell: str) -> None:
        self.id = ident
        self.sandbox_id = sandbox_id
        self.shell = shell
        self.status = SessionStatus.ACTIVE
        self.created_at = datetime.now(UTC)
        self.closed_at: datetime | None = None
        self._process = process
        # The write end of the shell's script pipe: the session's own, closed once, by
        # ``close`` (its number is free for any other descriptor of the server afterwards).
        self._stdin: int | None = process.stdin_fd
        self._lock = anyio.Lock()
        self._command: _Command | None = None
        self._eof: set[OutputStream] = set()
        self._exited = anyio.Event()
        self._exit_code: int | None = None
        # The shell's pid on the host, where it can be told apart from its commands and
        # interrupted (bash only): then a command can be stopped without closing the session.
        members = process.members()
        self._shell_pid = next(iter(members)) if members and len(members) == 1 else None
        self._stoppable = False

    @classmethod
    async def open(
        cls,
        ident: str,
        sandbox_id: str,
        process: Process,
        shell: str,
        task_group: anyio.abc.TaskGroup,
    ) -> Session:
        """Start the readers, send the driver, and wait until the shell answers."""
        session = cls(ident, sandbox_id, process, shell)
        task_group.start_soon(session._pump, OutputStream.STDOUT, process.stdout_fd)
        task_group.start_soon(session._pump, OutputStream.STDERR, process.stderr_fd)
        task_group.start_soon(session._reap)
        probe: Outcome | None = None
        try:
            with contextlib.suppress(SessionClosedError):  # (it went before it read them)
                await session._write(protocol.DRIVER)
                probe = await session.run(
                    'command printf "%s %s" "${BASH_VERSION:+bash}" "$__af_mode"',
                    timeout=_START_TIMEOUT,
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await session.close()
            raise
        if probe is None or probe.timed_out or session.status is SessionStatus.CLOSED:
            why = await session._not_started(probe)
            await session.close()
            named = f"the shell {shell!r}" if shell else "the sandbox's shell"
            raise SessionClosedError(f"session {ident}: {named} did not start: {why}")
        name, _, mode = probe.stdout.decode().partition(" ")
        if shell.rsplit("/", 1)[-1] == "bash" and name != "bash":  # (a runtime's stand-in sh)
            await session.close()
            raise SessionClosedError(f"session {ident}: the shell {shell!r} is not in the sandbox")
        stoppable = name == "bash" and mode == protocol.FROM_FD
        session._stoppable = stoppable and session._shell_pid is not None
        if not shell:
            session.shell = name or "sh"
        return session

    async def _not_started(self, probe: Outcome | None) -> str:
        """Why the shell did not answer its first command (``probe``: None when it went
        before it read it)."""
        if probe is not None and probe.timed_out:
            return f"it did not answer within {_START_TIMEOUT:g} s"
        with anyio.move_on_after(_KILL_GRACE):
            await self._exited.wait()
        if self._exit_code is None:
            return "it ended at once"
        return f"it ended at once, with exit code {self._exit_code}"

    # -- the shell's side -------------------------------------------------------------------

    async def _reap(self) -> None:
        self._exit_code = await self._process.wait()
        self._exited.set()
        if self._command is None:  # ended between commands: nobody else will notice
            await self.close()

    async def _pump(self, stream: OutputStream, fd: int) -> None:
        """Read one of the shell's streams to its end, handing bytes to the command now."""
        try:
            while True:
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    await anyio.wait_readable(fd)
                    continue
                except OSError:
                    data = b""
                if not data:
                    return
                await self._route(stream, data)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
            self._eof.add(stream)
            command = self._command
            if command is not None:
                await self._deliver(command, stream, command.scanners[stream].flush())
                command.delivered_all(stream)

    async def _route(self, stream: OutputStream, data: bytes) -> None:
        command = self._command
        if command is None:
            return  # background jobs' output between commands
        scanner = command.scanners[stream]
        if scanner.done():
            return
        await self._deliver(command, stream, scanner.feed(data))
        if scanner.done():
            command.delivered_all(stream)

    @staticmethod
    async def _deliver(command: _Command, stream: OutputStream, data: bytes) -> None:
        if data and not command.finished.is_set():
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await command.send.send((stream, data))

    async def _write(self, data: bytes) -> None:
        """Write ``data`` to the shell's script pipe, looking the descriptor up again after
        every wait: once ``close`` has closed it, its number may be another's."""
        view = memoryview(data)
        while view:
            fd = self._stdin
            if fd is None:
                raise SessionClosedError(f"session {self.id} is closed")
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                with contextlib.suppress(anyio.ClosedResourceError):  # (``close`` woke it)
                    await anyio.wait_writable(fd)
            except BrokenPipeError:  # the shell is gone
                raise SessionClosedError(f"session {self.id} is closed") from None

    # -- commands ---------------------------------------------------------------------------

    async def run(
        self,
        command: str,
        *,
        timeout: float,
        max_output: int = 1 << 20,
        on_output: OnOutput | None = None,
    ) -> Outcome:
        """Run ``command`` in the shell, after the commands before it."""
        async with self._lock:
            if self.status is SessionStatus.CLOSED:
                raise SessionClosedError(f"session {self.id} is closed")
            return await self._run_locked(command, timeout, max_output, on_output)

    async def _run_locked(
        self, text: str, timeout: float, max_output: int, on_output: OnOutput | None
    ) -> Outcome:
        started = time.monotonic()
        send, receive = anyio.create_memory_object_stream[Chunk](16)
        command = _Command(protocol.new_token(), send)
        before = self._process.members()
        captures = {s: OutputCapture(max_output) for s in OutputStream}
        self._command = command
        for stream in self._eof:  # the shell is going away
            command.delivered_all(stream)
        interrupted = done = False
        unwritten: SessionClosedError | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_consume, receive, captures, on_output)
                try:
                    await self._write(protocol.command_line(command.token, text))
                except SessionClosedError as exc:
                    unwritten = exc  # (raised below as itself, not in an exception group)
                    tg.cancel_scope.cancel()
                else:
                    with anyio.move_on_after(timeout):
                        await command.finished.wait()
                    if not command.finished.is_set():
                        interrupted = True
                        await self._interrupt(command, before)
            done = True
        finally:
            if not done:
                with anyio.CancelScope(shield=True):
                    await self._interrupt(command, before)
            self._command = None
        if unwritten is not None:  # the shell is gone, or the session was closed meanwhile
            await self.close()
            raise unwritten
        stopped = command.scanners[OutputStream.STDOUT].stopped
        if interrupted and not stopped and command.status is not None:
            # It ran on past the interrupt (a command that took the INT trap for itself):
            # what runs in this shell can no longer be stopped, so the shell goes.
            await self.close()
        exit_code = command.status
        if exit_code is None:  # the shell ended (``exit``, or we closed the session)
            with anyio.move_on_after(_KILL_GRACE, shield=True):
                await self._exited.wait()
            exit_code = 137 if self._exit_code is None else self._exit_code
            await self.close()
        detail = ""
        if interrupted:
            if stopped:
                detail = (
                    "the rest of its command line was skipped; the session and its state are kept"
                )
            elif command.status is not None:
                detail = (
                    f"it did not stop when interrupted and ran to its end (exit {command.status}); "
                    "the session was closed with every process in it"
                )
            else:
                detail = (
                    "the session was closed with every process in it, so nothing of the "
                    "command runs on"
                )
        return Outcome(
            stdout=captures[OutputStream.STDOUT].value(),
            stderr=captures[OutputStream.STDERR].value(),
            exit_code=exit_code,
            duration=time.monotonic() - started,
            timed_out=interrupted,
            detail=detail,
        )

    async def _interrupt(self, command: _Command, before: frozenset[int] | None) -> None:
        """Stop the command whole: kill what it started and interrupt the shell, which then
        skips the rest of the line and reports. When it cannot (not bash, a runtime that
        cannot tell processes apart) or does not report in time, close the session."""
        if command.finished.is_set():
            return
        if self._stoppable and before is not None:
            with contextlib.suppress(SessionClosedError, OSError):
                await self._write(protocol.stop_line(command.token))
            await self._process.kill_except(before, interrupt=self._shell_pid)
            with anyio.move_on_after(_KILL_GRACE):
                await command.finished.wait()
        if not command.finished.is_set():
            await self.close()
            command.finish()

    async def close(self) -> None:
        """Kill every process of the session; it is CLOSED from now on (idempotent)."""
        with anyio.CancelScope(shield=True):
            if self.status is not SessionStatus.CLOSED:
                self.status = SessionStatus.CLOSED
                self.closed_at = datetime.now(UTC)
            await self._process.kill()
            fd, self._stdin = self._stdin, None
            if fd is not None:
                anyio.notify_closing(fd)  # (a write waiting on it ends, and says closed)
                os.close(fd)


async def _consume(
    receive: MemoryObjectReceiveStream[Chunk],
    captures: dict[OutputStream, OutputCapture],
    on_output: OnOutput | None,
) -> None:
    async with receive:
        async for stream, data in receive:
            if on_output is None:
                captures[stream].add(data)
            else:
                await on_output(stream, data)
