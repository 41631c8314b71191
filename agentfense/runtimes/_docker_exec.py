"""One ``docker exec`` as a ``runtimes.base.Process``: pipes in and out, a wait, a kill.

The exec'd command is a gate (:func:`gate`, an ``sh -c`` script) that first waits for one
line on its stdin (``read``, which takes no byte beyond the newline). Meanwhile the server
moves it into a cgroup leaf of its own, so that everything it starts stays in the leaf; then
it sends the line, and the command's own stdin after it. The gate gives the command its
``$HOME`` and runs it through the confine helper where the server has one. The Engine API's
stream (a hijacked connection, frames of stdout and stderr) is copied into ordinary pipes, so
the rest of the server reads a Docker command exactly as a bwrap one.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc

from ._cgroup import SandboxCgroup
from ._confine import IN_CONTAINER
from ._docker_api import ProcessState, created_id
from ._pipes import write_all
from ._raw_socket_watch import take_listener
from .base import BadWorkdir, CommandSpec, ForkRefused, RawSocketWatch, RuntimeError_


class ExecHost(Protocol):
    """What an exec needs of its sandbox (``docker.DockerSandbox``)."""

    keep_home: bool  # one $HOME for every command (else a fresh one each)
    confined: bool  # its commands run through the confine helper
    # Where the listener of each command's raw-socket filter goes (confined sandboxes with a
    # network only: ``SandboxHandle.watch_raw_sockets``).
    raw_sockets: RawSocketWatch | None

    def new_leaf(self) -> tuple[Path, int] | None:
        """A cgroup leaf for a new command, and an fd on its ``cgroup.procs``."""
        ...

    def runtime_task_group(self) -> anyio.abc.TaskGroup:
        """Where the copying tasks of its commands run."""
        ...

    def finished(self, process: DockerProcess) -> None:
        """The command's own process exited and its leaf is released."""
        ...


Call = Callable[..., Awaitable[Any]]
# $0 is "sh"; the command's argv follows. Exit 125 when the server hung up before the go.
# Every command starts with an OOM score adjustment above pid 1's (raising needs no privilege),
# so the OOM killer takes pid 1, which holds the container up, last.
_OOM = "{ echo 500 >/proc/self/oom_score_adj; } 2>/dev/null; "
_GO = "IFS= read -r _ || exit 125; "
_WATCH_WAIT = 10.0  # seconds for confine to leave the gate its raw-socket filter's listener


def gate(*, keep_home: bool, confined: bool, watched: bool = False) -> str:
    """The ``sh -c`` script that starts a command: ``confined``, through the confine helper
    (a Landlock domain of the command's own, writing beneath its own ``$HOME`` only of
    ``/home``); the gate itself stays unconfined, to remove that home afterwards. ``watched``:
    confine, which started it, read the go (having waited for it with the listener of its
    raw-socket filter, which the server took meanwhile, and closed)."""
    go = "" if watched else _GO
    if keep_home:  # one $HOME, /home/sandbox (on the /home tmpfs, made once)
        run = f'exec {IN_CONTAINER} /home "$@"' if confined else 'exec "$@"'
        heal = "[ -x /home ] || chmod 755 /home; "  # (see below)
        return _OOM + go + heal + '[ -d "$HOME" ] || mkdir -p "$HOME"; ' + run
    # Else each command gets an empty one, removed when the command's own process exits (the
    # shell waits for it; the home of a command killed stays on /home's tmpfs till the stop).
    # Its contents are removed in the command's own domain: a process it left there could
    # swap a directory being emptied for a link elsewhere (busybox's rm walks by path names),
    # and then the rm may do no more than the command could. The gate removes only the empty
    # directory itself (rmdir, which follows no link). A /home made unusable (chmod 000, which
    # is no Landlock right) is given its mode back for the next command.
    run = f'{IN_CONTAINER} "$HOME" "$@"' if confined else '"$@"'
    empty = f'{IN_CONTAINER} "$HOME" rm -rf -- "$HOME" 2>/dev/null; rmdir -- "$HOME" 2>/dev/null'
    # (Each attempt is one command substitution of one program, which the shell execs in its
    # fork: a sandbox whose pids are nearly all taken by leftovers needs no more pids here.)
    new_home = "mktemp -d /home/home-XXXXXXXXXX"
    return (
        _OOM
        + go
        + f"HOME=$({new_home} 2>/dev/null) || HOME=$(chmod 755 /home && {new_home}) "
        + "|| exit 125; "
        + f"export HOME; {run}; code=$?; "
        + (empty if confined else 'rm -rf -- "$HOME"')
        + "; exit $code"
    )


_HEADER = struct.Struct(">BxxxL")


class DockerProcess:
    """A command started with ``docker exec``; implements ``runtimes.base.Process``."""

    def __init__(
        self,
        call: Call,
        exec_id: str,
        sock: socket.socket,
        leaf: Path | None,
        sandbox: ExecHost,
    ) -> None:
        self._call = call
        self._exec_id = exec_id
        self._sock = sock
        self.leaf = leaf
        self._sandbox = sandbox
        # The exec's own process, held by a pid fd (a number would outlive it, and name
        # whatever host process takes it next); None before it is known, and once released.
        self._pidfd: int | None = None
        stdin_r, self.stdin_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.stdout_fd, stdout_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.stderr_fd, stderr_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._ours = (stdin_r, stdout_w, stderr_w)
        self._ended = anyio.Event()
        self._exit_code: int | None = None
        self.watch_ended: Callable[[], None] | None = None  # (its raw-socket watch)

    async def run(self) -> None:
        """Copy stdin to the exec and its frames out, until its stream ends."""
        stdin_r, stdout_w, stderr_w = self._ours
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._copy_stdin, stdin_r)
                await self._copy_frames({1: stdout_w, 2: stderr_w})
                tg.cancel_scope.cancel()
        finally:
            for fd in self._ours:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._sock.close()
            if self.watch_ended is not None:
                self.watch_ended()
            self._ended.set()

    async def _copy_stdin(self, stdin_r: int) -> None:
        try:
            while True:
                try:
                    data = os.read(stdin_r, 1 << 16)
                except BlockingIOError:
                    await anyio.wait_readable(stdin_r)
                    continue
                if not data:
                    break
                await _send_all(self._sock, data)
            self._sock.shutdown(socket.SHUT_WR)  # the command's stdin ends
        except OSError:
            pass

    async def _copy_frames(self, pipes: dict[int, int]) -> None:
        buffer = bytearray()
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data
            while len(buffer) >= _HEADER.size:
                kind, size = _HEADER.unpack_from(buffer)
                if len(buffer) < _HEADER.size + size:
                    break
                payload = bytes(buffer[_HEADER.size : _HEADER.size + size])
                del buffer[: _HEADER.size + size]
                fd = pipes.get(kind)
                if fd is not None:
                    await write_all(fd, payload)  # False: the command was abandoned

    async def wait(self) -> int:
        await self._ended.wait()
        if self._exit_code is None:
            for _ in range(500):  # the stream ends a moment before docker records the exit
                found = ProcessState.decode(await self._call("exec_inspect", self._exec_id))
                if not found.running:
                    self._exit_code = 137 if found.exit_code is None else found.exit_code
                    break
                await anyio.sleep(0.01)
            else:
                self._exit_code = 137
        return self._exit_code

    async def kill(self) -> None:
        with anyio.CancelScope(shield=True):
            if self.leaf is not None:
                SandboxCgroup.kill(self.leaf)
            elif self._pidfd is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            with anyio.move_on_after(5):
                await self._ended.wait()
                if self.leaf is not None:
                    await SandboxCgroup.emptied(self.leaf)
            await self.release()

    def members(self) -> frozenset[int] | None:
        return None if self.leaf is None else SandboxCgroup.members(self.leaf)

    async def kill_except(self, keep: frozenset[int], *, interrupt: int | None = None) -> None:
        if self.leaf is not None:
            await SandboxCgroup.kill_except(self.leaf, keep, interrupt=interrupt)

    def close_pipes(self) -> None:
        """It never started (``run`` never runs): close both ends of its pipes, which no one
        else will."""
        for fd in (*self._ours, self.stdin_fd, self.stdout_fd, self.stderr_fd):
            os.close(fd)

    async def take_raw_socket_watch(self) -> int:
        """The listener of the raw-socket filter confine left in the gate, once it is there
        (RuntimeError_ when the gate never got one)."""
        with anyio.move_on_after(_WATCH_WAIT):
            while self._pidfd is not None:
                listener = take_listener(self._pidfd)
                if listener is not None:
                    return listener
                if select.select([self._pidfd], [], [], 0)[0]:
                    break  # (it exited: confine said why, which the stream carries)
                await anyio.sleep(0.001)
        text = await _read_text(self._sock) if self._pidfd is not None else ""
        raise RuntimeError_(
            f"cannot start the command: {text.strip() or 'its raw-socket watch never came'}"
        )

    def hold(self, pid: int) -> None:
        """Take a pid fd on the exec's process, host pid ``pid`` (known while it waits for
        its go: then the number is surely its own)."""
        with contextlib.suppress(ProcessLookupError):
            self._pidfd = os.pidfd_open(pid)

    async def release(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._sandbox.finished(self)
        if self.leaf is not None and SandboxCgroup.try_remove(self.leaf):
            self.leaf = None


async def start_exec(
    call: Call, container_id: str, command: CommandSpec, sandbox: ExecHost
) -> DockerProcess:
    """Start ``command`` in the container, in a cgroup leaf of its own where there is one."""
    import docker

    take = sandbox.raw_sockets if sandbox.confined else None
    watch = [IN_CONTAINER, "--watch-raw-sockets"] if take is not None else []
    script = gate(keep_home=sandbox.keep_home, confined=sandbox.confined, watched=bool(watch))
    try:
        created = await call(
            "exec_create",
            container_id,
            [*watch, "/bin/sh", "-c", script, "sh", *command.argv],
            stdin=True,
            stdout=True,
            stderr=True,
            tty=False,
            environment=dict(command.env),
            workdir=command.cwd,
        )
        exec_id = created_id(created)
        stream = await call("exec_start", exec_id, socket=True, demux=False)
    except docker.errors.APIError as exc:
        raise _start_error(str(exc.explanation or exc), command) from None
    # The hijacked connection, taken from the docker library: its socket object keeps the
    # descriptor open until the cyclic GC collects the HTTP response around it (its close
    # only marks it), so the descriptor moves to a socket object that is ours alone.
    sock = socket.socket(fileno=stream._sock.detach())
    sock.setblocking(False)
    opened = sandbox.new_leaf()
    leaf, procs_fd = opened if opened is not None else (None, -1)
    process = DockerProcess(call, exec_id, sock, leaf, sandbox)
    try:
        pid = await _exec_pid(call, exec_id, sock, command)
        process.hold(pid)
        if take is not None:
            process.watch_ended = take(await process.take_raw_socket_watch())
        if procs_fd >= 0:
            with contextlib.suppress(ProcessLookupError):
                os.write(procs_fd, str(pid).encode())
        await _send_all(sock, b"\n")  # go
    except BaseException:
        sock.close()
        process.close_pipes()
        await process.release()
        raise
    finally:
        if procs_fd >= 0:
            os.close(procs_fd)
    sandbox.runtime_task_group().start_soon(process.run)
    return process


def _start_error(text: str, command: CommandSpec) -> RuntimeError_:
    """What docker's reason for not starting a command means."""
    text = text.strip()
    if "chdir to cwd" in text or (command.cwd in text and "no such file" in text.lower()):
        return BadWorkdir(text)
    if "resource temporarily unavailable" in text.lower():
        return ForkRefused(f"cannot start the command: {text}")
    return RuntimeError_(f"cannot start the command: {text}")


async def _read_text(sock: socket.socket) -> str:
    """The payload of what is left in an exec's stream (a short error), as text."""
    data = bytearray()
    with anyio.move_on_after(2):
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                await anyio.wait_readable(sock)
                continue
            if not chunk:
                break
            data += chunk
    text = []
    while len(data) >= _HEADER.size:
        _kind, size = _HEADER.unpack_from(data)
        text.append(bytes(data[_HEADER.size : _HEADER.size + size]))
        del data[: _HEADER.size + size]
    return b"".join(text).decode(errors="replace")


async def _exec_pid(call: Call, exec_id: str, sock: socket.socket, command: CommandSpec) -> int:
    """The host pid of the exec's process, once docker knows it; the reason it did not
    start (which docker puts in the stream) raised when it never ran, or that docker did not
    say."""
    for _ in range(500):
        found = ProcessState.decode(await call("exec_inspect", exec_id))
        if found.pid:
            return found.pid
        if not found.running and found.exit_code is not None:
            raise _start_error(await _read_text(sock), command)
        await anyio.sleep(0.002)
    # (Not a pid of 0: written to cgroup.procs, that moves the server itself into the leaf.)
    raise RuntimeError_("cannot start the command: the Docker engine never told its process")


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            continue
        view = view[sent:]
