"""The server's side of the agent protocol (see ``_agent.py``): spawn, kill, exit reports."""

from __future__ import annotations

import array
import contextlib
import errno
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

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
            self.connection.send({"op": "kill", "id": self.ident, "signal": 9})
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
        self._spawned: dict[int, tuple[anyio.Event, dict[str, Any]]] = {}
        self.ready = anyio.Event()
        self.closed = anyio.Event()

    def send(self, header: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(header).encode()
        if fds:
            self._sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        else:
            self._sock.send(data)

    async def run(self) -> None:
        """Read the agent's reports until it exits or the socket closes."""
        try:
            while True:
                await anyio.wait_readable(self._sock)
                try:
                    data = self._sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    self._dispatch(json.loads(data))
                except (ValueError, KeyError, TypeError, AttributeError):
                    # Not what the agent sends: the sandbox is not to be trusted any more.
                    # Hang up (which stops it) rather than let its message break the server.
                    return
        finally:
            self.closed.set()
            self._sock.close()
            for event, reply in self._spawned.values():
                reply.setdefault("error", "the sandbox stopped")
                event.set()
            for process in self._pending.values():
                if process.exit_code is None:
                    process.exit_code = 137
                process.exited.set()
            self._pending.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "ready" in message:
            self.ready.set()
            return
        ident = message["id"]
        if "pid" in message or "error" in message:
            event, reply = self._spawned.pop(ident)
            reply.update(message)
            event.set()
        elif "exit" in message:
            process = self._pending.pop(ident, None)
            if process is not None:
                process.exit_code = int(message["exit"])
                process.exited.set()

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
        event, reply = anyio.Event(), dict[str, Any]()
        self._spawned[ident] = (event, reply)
        self._pending[ident] = process
        try:
            self.send(
                {
                    "op": "spawn",
                    "id": ident,
                    "argv": list(command.argv),
                    "env": dict(command.env),
                    "cwd": command.cwd,
                },
                theirs,
            )
        except OSError as exc:
            self._spawned.pop(ident, None)
            self._pending.pop(ident, None)
            _close_all(ours)
            raise SandboxGone(f"the sandbox is not running ({exc.strerror})") from None
        finally:
            _close_all(theirs)
        with anyio.CancelScope(shield=True):
            await event.wait()
        if "error" in reply:
            self._pending.pop(ident, None)
            _close_all(ours)
            if leaf is not None:
                SandboxCgroup.try_remove(leaf)
            if reply.get("field") == "workdir":
                raise BadWorkdir(reply["error"])
            if reply.get("errno") == errno.EAGAIN:
                raise ForkRefused(f"cannot start the command: {reply['error']}")
            raise RuntimeError_(f"cannot start the command: {reply['error']}")
        return process

    def running_leaves(self) -> list[Path]:
        """The cgroup leaves of the commands whose own process still runs."""
        return [p.leaf for p in self._pending.values() if p.leaf is not None]

    def shutdown(self) -> None:
        """Tell the agent to kill its commands and exit (``run`` then returns)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
