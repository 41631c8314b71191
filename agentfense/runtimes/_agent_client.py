"""The server's side of the agent protocol (see ``_agent.py``): spawn, kill, exit reports,
as the typed messages of ``_agent_messages.py``, one per datagram."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .. import _seqpacket
from .._json_messages import MessageError
from .._seqpacket import FrameError, close_all
from ._agent_messages import (
    MAX_REPLY,
    Exited,
    Kill,
    Ready,
    Refused,
    Reply,
    Spawn,
    Started,
    decode_reply,
)
from ._cgroup import SandboxCgroup
from .base import BadWorkdir, CommandSpec, ForkRefused, RuntimeError_, SandboxGone

AGENT_SOURCE = (Path(__file__).parent / "_agent.py").read_text()


@dataclass(eq=False)
class AgentProcess:
    """A command started by the agent; implements ``runtimes.base.Process``."""

    connection: AgentConnection
    ident: int
    stdin_fd: int
    stdout_fd: int
    stderr_fd: int
    leaf: Path | None
    exit_code: int | None = None
    exited: anyio.Event = field(default_factory=anyio.Event)

    async def wait(self) -> int:
        await self.exited.wait()
        assert self.exit_code is not None
        return self.exit_code

    async def kill(self) -> None:
        if self.leaf is not None:
            SandboxCgroup.kill(self.leaf)
        with contextlib.suppress(OSError):
            self.connection.send(Kill(self.ident, 9))
        with anyio.move_on_after(5, shield=True):
            await self.exited.wait()
            if self.leaf is not None:
                await SandboxCgroup.emptied(self.leaf)
        await self.release()

    def members(self) -> frozenset[int] | None:
        if self.leaf is None:
            return None
        return SandboxCgroup.members(self.leaf)

    async def kill_except(self, keep: frozenset[int], *, interrupt: int | None = None) -> None:
        if self.leaf is not None:
            await SandboxCgroup.kill_except(self.leaf, keep, interrupt=interrupt)

    async def release(self) -> None:
        if self.leaf is not None and SandboxCgroup.try_remove(self.leaf):
            self.leaf = None


class AgentConnection:
    """One agent's control socket. ``run`` must be running (in a task) while it is used."""

    def __init__(self, sock: socket.socket, cgroup: SandboxCgroup | None) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._cgroup = cgroup
        self._next_id = 0
        self._pending: dict[int, AgentProcess] = {}
        self._spawned: dict[int, _Spawning] = {}
        self.ready = anyio.Event()
        self.closed = anyio.Event()

    def send(self, request: Spawn | Kill, fds: Sequence[int] = ()) -> None:
        """Send ``request`` now: OSError (BlockingIOError too) if the agent cannot take it."""
        _seqpacket.send(self._sock, request.encode(), fds)

    async def run(self) -> None:
        """Read the agent's reports until it exits or the socket closes."""
        try:
            while True:
                try:
                    data, _ = await _seqpacket.receive_async(self._sock, most=MAX_REPLY)
                    if not data:
                        return
                    self._dispatch(decode_reply(data))
                except OSError:
                    return
                except (FrameError, MessageError):
                    # Not what the agent sends: the sandbox is not to be trusted any more.
                    # Hang up (which stops it) rather than let its message break the server.
                    return
        finally:
            self.closed.set()
            self._sock.close()
            for spawning in self._spawned.values():
                spawning.done.set()  # with no reply: the sandbox stopped
            for process in self._pending.values():
                if process.exit_code is None:
                    process.exit_code = 137
                process.exited.set()
            self._pending.clear()

    def _dispatch(self, reply: Reply) -> None:
        if isinstance(reply, Ready):
            self.ready.set()
        elif isinstance(reply, Exited):
            process = self._pending.pop(reply.id, None)
            if process is not None:
                process.exit_code = reply.code
                process.exited.set()
        else:
            spawning = self._spawned.pop(reply.id, None)
            if spawning is None:
                raise MessageError(f"a reply about command {reply.id}, which is not starting")
            spawning.reply = reply
            spawning.done.set()

    async def spawn(self, command: CommandSpec) -> AgentProcess:
        if self.closed.is_set():
            raise SandboxGone("the sandbox is not running")
        self._next_id += 1
        ident = self._next_id
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        theirs = [stdin_r, stdout_w, stderr_w]
        for fd in theirs:
            # The pipes are the server's (root's, 0600): the command could not reopen its
            # own stdio through /dev/stdout, /dev/stderr or /proc/self/fd otherwise.
            os.fchmod(fd, 0o666)
        leaf: Path | None = None
        if self._cgroup is not None:
            leaf, procs_fd = self._cgroup.open_command()
            theirs.append(procs_fd)
            dir_fd = self._cgroup.leaf_dir_fd(leaf)
            if dir_fd is not None:
                theirs.append(dir_fd)
        ours = [stdin_w, stdout_r, stderr_r]
        for fd in ours:
            os.set_blocking(fd, False)
        process = AgentProcess(self, ident, stdin_w, stdout_r, stderr_r, leaf)
        spawning = self._spawned[ident] = _Spawning()
        self._pending[ident] = process
        try:
            self.send(Spawn(ident, command.argv, command.env, command.cwd), theirs)
        except OSError as exc:
            self._spawned.pop(ident, None)
            self._pending.pop(ident, None)
            close_all(ours)
            raise SandboxGone(f"the sandbox is not running ({exc.strerror})") from None
        finally:
            close_all(theirs)
        with anyio.CancelScope(shield=True):
            await spawning.done.wait()
        if isinstance(spawning.reply, Started):
            return process
        self._pending.pop(ident, None)
        close_all(ours)
        if leaf is not None:
            SandboxCgroup.try_remove(leaf)
        if spawning.reply is None:
            raise SandboxGone("cannot start the command: the sandbox stopped")
        refused = spawning.reply
        if refused.workdir:
            raise BadWorkdir(refused.error)
        if refused.errno == errno.EAGAIN:
            raise ForkRefused(f"cannot start the command: {refused.error}")
        raise RuntimeError_(f"cannot start the command: {refused.error}")

    def running_leaves(self) -> list[Path]:
        """The cgroup leaves of the commands whose own process still runs."""
        return [p.leaf for p in self._pending.values() if p.leaf is not None]

    def shutdown(self) -> None:
        """Tell the agent to kill its commands and exit (``run`` then returns)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


class _Spawning:
    """A spawn request waiting for the agent's answer (None: the sandbox stopped first)."""

    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: Started | Refused | None = None
