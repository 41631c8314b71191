"""bwrap sandboxes that no process holds while they are idle (a server that runs as root).

A sandbox is four namespaces (mount, network, ipc, uts) that bwrap builds once, with the
launcher's ``hold`` mode as its command (``launcher.c``); the server keeps an fd on each
(``/proc/<holder>/ns/*``) and lets bwrap go. So an idle sandbox has no process: it costs
what the kernel keeps for its namespaces and mounts, and a few objects here. Each command is
one ``launcher run``: in a new pid namespace whose init the server then keeps (a pidfd), or
in the running init's, joined; a root guard starts the command as uid 1000 of a user
namespace of its own, in the command's cgroup leaf, and reports on a status pipe (``init
PID`` for a new init, ``ok`` or ``error ...``, then ``exit N``). The init stays while
anything runs in its namespace; the server reaps each launcher when it ends.
docs/architecture.md, "Held sandboxes", is the whole design.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from ._cgroup import SandboxCgroup, hold
from ._limits import SandboxLimits
from ._processes import reap, spawn
from ._raw_socket_watch import is_seccomp_listener
from ._waiting_launcher import WAIT_FOR, WaitingLauncher
from .base import (
    BadWorkdir,
    CommandSpec,
    ForkRefused,
    RawSocketWatch,
    RuntimeError_,
    SandboxGone,
)

_log = logging.getLogger(__name__)
NAMESPACES = ("mnt", "net", "ipc", "uts")  # (launcher.c's order)
_MAX_LINE = 1024  # a status line is shorter (launcher.c's ``say``)
_JOIN_ATTEMPTS = 3  # inits found ending, one after another, before a command gives up
# bwrap makes these as root; the sandbox's processes run as its host uid (1000 inside).
_OWNED = ("home", "home/sandbox", "dev/shm", "tmp")


class HeldNamespaces:
    """The fds that keep a sandbox's namespaces while no process is in them."""

    def __init__(self, holder_pid: int) -> None:
        self.fds: list[int] = []
        try:
            for kind in NAMESPACES:
                path = f"/proc/{holder_pid}/ns/{kind}"
                self.fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


def give_to_sandbox(holder_pid: int, uid: int, gid: int) -> None:
    """Give the sandbox's tmpfs to its host uid, through the holder's root (the server never
    enters the mount namespace)."""
    root = Path(f"/proc/{holder_pid}/root")
    for path in _OWNED:
        os.chown(root / path, uid, gid)
    os.chmod(root / "tmp", 0o1777)


class _StatusReader:
    """Lines from a launcher's status pipe (non-blocking read end)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""
        self._eof = False

    async def line(self) -> str | None:
        """The next line, None at EOF (or at a line too long to be the launcher's)."""
        while b"\n" not in self._buffer:
            if self._eof or len(self._buffer) > _MAX_LINE:
                return None
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                await anyio.wait_readable(self.fd)
                continue
            if not chunk:
                self._eof = True
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def close(self) -> None:
        os.close(self.fd)


@dataclass(eq=False)
class LaunchedProcess:
    """A command started by the launcher; implements ``runtimes.base.Process``."""

    stdin_fd: int
    stdout_fd: int
    stderr_fd: int
    leaf: Path
    exit_code: int | None = None
    exited: anyio.Event = field(default_factory=anyio.Event)
    watch_ended: Callable[[], None] | None = None  # (its raw-socket watch: ``_take_watch``)

    async def wait(self) -> int:
        await self.exited.wait()
        assert self.exit_code is not None
        return self.exit_code

    async def kill(self) -> None:
        SandboxCgroup.kill(self.leaf)  # (its guard, outside the leaf, then reports the kill)
        with anyio.move_on_after(5, shield=True):
            await self.exited.wait()
            await SandboxCgroup.emptied(self.leaf)
        await self.release()

    def members(self) -> frozenset[int] | None:
        return SandboxCgroup.members(self.leaf)

    async def kill_except(self, keep: frozenset[int], *, interrupt: int | None = None) -> None:
        await SandboxCgroup.kill_except(self.leaf, keep, interrupt=interrupt)

    async def release(self) -> None:
        SandboxCgroup.try_remove(self.leaf)


class _Deciding:
    """A hold on a sandbox's lock while a command decides which init it runs under, let go
    once that is settled (``done``, at most once)."""

    def __init__(self, lock: anyio.Lock) -> None:
        self._lock = lock
        self._held = False

    async def start(self) -> None:
        await self._lock.acquire()
        self._held = True

    def done(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


class _InitGone(Exception):
    """The init a command was to join ended first."""

    def __init__(self, init: _Init) -> None:
        super().__init__("the init ended")
        self.init = init


@dataclass(frozen=True, slots=True)
class _Init:
    """The running init of a held sandbox's commands' pid namespace."""

    pidfd: int
    leaf: Path
    door: int  # a file the init marks when it ends, under a lock joiners share (launcher.c)

    def alive(self) -> bool:
        poller = select.poll()  # (not select(): fds past 1,024 are common here)
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)  # (readable: it has exited)

    def close(self) -> None:
        os.close(self.pidfd)
        os.close(self.door)
        SandboxCgroup.try_remove(self.leaf)


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


@dataclass(frozen=True, slots=True)
class LaunchSettings:
    """What every command of one sandbox is started with."""

    launcher: Path
    seccomp_fd: int  # the filter (a memfd of the runtime's, for every sandbox)
    uid: int
    gid: int
    nproc: int
    fresh_home: bool


class HeldSandbox:
    """A bwrap sandbox held by fds; implements ``runtimes.base.SandboxHandle``."""

    def __init__(
        self,
        namespaces: HeldNamespaces,
        settings: LaunchSettings,
        cgroup: SandboxCgroup,
        limits: SandboxLimits | None,
        limit_fds: Sequence[int],
        task_group: anyio.abc.TaskGroup,
        session_bash: str | None,
        waiting: WaitingLauncher | None = None,
    ) -> None:
        self._namespaces = namespaces
        self._settings = settings
        self._cgroup = cgroup
        # No process may be in its cgroups for long: another server's sweep would take them
        # for a killed server's (``sweep_dead``) but for this.
        self._hold_fd = hold(cgroup.path)
        self._limits = limits
        self._limit_fds = list(limit_fds)
        self._task_group = task_group
        self._session_bash = session_bash
        self._running: set[LaunchedProcess] = set()
        self._init: _Init | None = None
        self._deciding = anyio.Lock()  # (see ``_launch_settled``)
        self._stopped = False
        # Set once the first command has ended (or the sandbox stopped): work done ahead
        # (the pool's next build) waits for it, not to compete with a first command.
        self.first_done = anyio.Event()
        self._waiting = waiting  # (for the first command: ``_waiting_launcher``)
        # Where the listener of each command's raw-socket filter goes (``watch_raw_sockets``).
        self._raw_sockets: RawSocketWatch | None = None
        if waiting is not None:
            task_group.start_soon(self._let_waiting_go, waiting)

    @property
    def alive(self) -> bool:
        return not self._stopped

    @property
    def session_bash(self) -> str | None:
        return self._session_bash

    async def spawn(self, command: CommandSpec) -> LaunchedProcess:

        if self._stopped:
            raise SandboxGone("the sandbox is not running")
        for _ in range(_JOIN_ATTEMPTS):
            try:
                return await self._launch_settled(command)
            except _InitGone as gone:  # (it ended between the look and the join: again)
                if self._init is gone.init:
                    self._forget_init()
        raise RuntimeError_(
            f"cannot start the command: {_JOIN_ATTEMPTS} inits of the sandbox's commands "
            "ended as it was joining them"
        )

    async def _launch_settled(self, command: CommandSpec) -> LaunchedProcess:
        """Launch ``command`` in the running init's namespaces, or in a new init's. One
        command at a time decides, until a new init is known: commands started together
        share one pid namespace, as they always did (each sees the others)."""
        deciding = _Deciding(self._deciding)
        await deciding.start()
        try:
            if self._stopped:  # (while it waited its turn: its cgroup may be gone)
                raise SandboxGone("the sandbox is not running")
            init = self._live_init()
            if init is not None:
                deciding.done()
            return await self._launch(command, init, deciding)
        finally:
            deciding.done()

    def _live_init(self) -> _Init | None:
        """The init of the commands' pid namespace while something runs there."""
        init = self._init
        if init is not None and not init.alive():
            self._forget_init()
            return None
        return init

    def _forget_init(self) -> None:
        init, self._init = self._init, None
        if init is not None:
            init.close()

    async def _launch(
        self, command: CommandSpec, init: _Init | None, deciding: _Deciding
    ) -> LaunchedProcess:
        settings = self._settings
        # (a waiting launcher's leaves were made before it began to move: a mkdir would wait)
        waiting, self._waiting = self._waiting, None
        leaf, spare = waiting.leaves if waiting is not None else (self._cgroup.new_leaf(), None)
        # The init's leaf holds the init and the guards (of the commands that join it too).
        if init is not None:
            init_dir = init.leaf
            if spare is not None:
                SandboxCgroup.try_remove(spare)
        else:
            init_dir = spare or self._cgroup.new_leaf("init")
        init_leaf = None if init is not None else init_dir  # (a new one)
        theirs: list[int] = []
        ours: list[int] = []
        door = -1
        try:
            door = init.door if init is not None else os.memfd_create("door", os.MFD_CLOEXEC)
            leaf_fd = _open_dir(leaf)
            theirs.append(leaf_fd)
            init_leaf_fd = _open_dir(init_dir)
            theirs.append(init_leaf_fd)
            # (each pipe's ends listed as it is made: a later one refused closes them)
            stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
            theirs.append(stdin_r)
            ours.append(stdin_w)
            stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
            theirs.append(stdout_w)
            ours.append(stdout_r)
            stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
            theirs.append(stderr_w)
            ours.append(stderr_r)
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            theirs.append(status_w)
            ours.append(status_r)
            watch = -1  # (the launcher sends its raw-socket filter's listener there)
            if self._raw_sockets is not None:
                watch_ours, watch_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                watch = watch_theirs.detach()
                theirs.append(watch)
                ours.append(watch_ours.detach())
            for fd in (stdin_r, stdout_w, stderr_w):
                # The pipes are the server's (root's, 0600): the command could not reopen
                # its own stdio through /dev/stdout, /dev/stderr or /proc/self/fd otherwise.
                os.fchmod(fd, 0o666)
            for fd in ours:
                os.set_blocking(fd, False)
            # In the order a waiting launcher takes them, from 0 on (``_waiting_launcher``).
            passed = [stdin_r, stdout_w, stderr_w, status_w, settings.seccomp_fd]
            if watch >= 0:
                passed.append(watch)
            passed += [*self._namespaces.fds, init_leaf_fd, leaf_fd, door]
            join = -1 if init is None else init.pidfd
            if join >= 0:
                passed.append(join)

            def run_args(number: Callable[[int], int], limits: str) -> list[str]:
                """``launcher run``'s, each fd named by ``number``: its number there."""
                return [
                    "run",
                    str(number(status_w)),
                    str(number(settings.seccomp_fd)),
                    str(-1 if watch < 0 else number(watch)),
                    ",".join(str(number(fd)) for fd in self._namespaces.fds),
                    str(number(init_leaf_fd)),
                    str(number(leaf_fd)),
                    str(-1 if join < 0 else number(join)),
                    str(number(door)),
                    limits,
                    str(settings.uid),
                    str(settings.gid),
                    str(settings.nproc),
                    "fresh" if settings.fresh_home else "keep",
                    command.cwd,
                    "--",
                    *command.argv,
                ]

            if waiting is not None and waiting.send(
                run_args(passed.index, "-"), command.env, passed
            ):
                launcher = waiting.process
            else:
                if waiting is not None:  # (let go by ``send``: it ends)
                    self._task_group.start_soon(reap, waiting.process)
                    waiting = None
                limits = ",".join(map(str, self._limit_fds)) or "-"
                launcher = spawn(
                    # (the init rewrites its command line: the server's paths are not shown)
                    ["init", *run_args(lambda fd: fd, limits)],
                    executable=settings.launcher,
                    stdin=stdin_r,
                    stdout=stdout_w,
                    stderr=stderr_w,
                    pass_fds=passed[3:] + self._limit_fds,
                    env=dict(command.env),
                )
        except (OSError, ValueError) as exc:  # (ValueError: a NUL in argv or env)
            if waiting is not None:  # taken, never sent to: it goes now, not left waiting
                waiting.close()
                self._task_group.start_soon(reap, waiting.process)
            for fd in theirs + ours:
                os.close(fd)
            if init is None and door >= 0:
                os.close(door)
            for empty in (leaf, init_leaf):
                if empty is not None:
                    SandboxCgroup.try_remove(empty)
            if isinstance(exc, OSError) and exc.errno == errno.EAGAIN:
                raise ForkRefused(f"cannot start the command: {exc.strerror}") from None
            detail = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise RuntimeError_(f"cannot start the command: {detail}") from None
        for fd in theirs:
            os.close(fd)
        status = _StatusReader(ours[3])
        process = LaunchedProcess(ours[0], ours[1], ours[2], leaf)
        with anyio.CancelScope(shield=True):
            first = await status.line()
            if watch >= 0:  # (sent before the launcher said anything)
                process.watch_ended = self._take_watch(ours[4])
            if init_leaf is not None and first is not None and first.startswith("init "):
                door = self._adopt_init(first, init_leaf, door)
                deciding.done()
                first = await status.line()
        if init is None and door >= 0:
            os.close(door)  # (not adopted: no init to join)
        if first == "ok":
            self._running.add(process)
            self._task_group.start_soon(self._follow, process, status, launcher)
            return process
        if process.watch_ended is not None:
            process.watch_ended()
        for fd in ours[:3]:
            os.close(fd)
        status.close()
        self._task_group.start_soon(reap, launcher)
        with anyio.CancelScope(shield=True):
            await SandboxCgroup.emptied(leaf)
        SandboxCgroup.try_remove(leaf)
        if init is not None and _error_number(first) in (errno.ESRCH, errno.ENOMEM):
            raise _InitGone(init)  # (setns: it has ended; clone3: its namespace is ending)
        raise _refusal(first, stopped=self._stopped)

    def watch_raw_sockets(self, take: RawSocketWatch) -> bool:
        self._raw_sockets = take
        return True

    def _take_watch(self, sock: int) -> Callable[[], None] | None:
        """The listener a launcher sent on ``sock`` (which this closes), to the watcher;
        what to call when its command has ended."""
        take = self._raw_sockets
        try:
            with socket.socket(fileno=sock) as ours:
                _, fds, _, _ = socket.recv_fds(ours, 1, 1, socket.MSG_DONTWAIT)
        except OSError:  # (nothing sent: the launcher failed before, and said why)
            return None
        ended = None
        for fd in fds:
            if take is not None and ended is None and is_seccomp_listener(fd):
                ended = take(fd)
            else:
                os.close(fd)
        return ended

    def _adopt_init(self, line: str, leaf: Path, door: int) -> int:
        """Keep the init the launcher started (``init PID``) for later commands to join: a
        pidfd on it, once its pid is seen in its own leaf (where only it starts), and its
        door. The door when it is not kept (-1 when it is)."""
        with contextlib.suppress(ValueError, OSError):
            pid = int(line[5:])
            pidfd = os.pidfd_open(pid)
            if pid in SandboxCgroup.members(leaf):
                self._forget_init()
                self._init = _Init(pidfd, leaf, door)
                return -1
            os.close(pidfd)  # (ended already: its command is done, nothing to join)
        return door

    async def _follow(
        self, process: LaunchedProcess, status: _StatusReader, launcher: subprocess.Popen[bytes]
    ) -> None:
        """Until the command's exit is known; then until its launcher (and init) ends."""
        try:
            line = await status.line()
            code = 137  # its guard was killed before it could say (its pid namespace went)
            if line is not None and line.startswith("exit "):
                with contextlib.suppress(ValueError):
                    code = int(line[5:])
            process.exit_code = code
        finally:
            status.close()
            if process.exit_code is None:
                process.exit_code = 137
            if process.watch_ended is not None:
                process.watch_ended()
            process.exited.set()
            self._running.discard(process)
            self.first_done.set()
        await reap(launcher)

    async def _let_waiting_go(self, waiting: WaitingLauncher) -> None:
        """No first command came soon: an idle sandbox keeps no process."""
        await anyio.sleep(WAIT_FOR)
        self._close_waiting(waiting)

    def _close_waiting(self, waiting: WaitingLauncher | None) -> None:
        """Let ``waiting`` go if it is still unused (it ends at once), and reap it."""
        if waiting is not None and self._waiting is waiting:
            self._waiting = None
            waiting.close()
            self._task_group.start_soon(reap, waiting.process)
            for leaf in waiting.leaves:
                SandboxCgroup.try_remove(leaf)

    def network_namespace(self) -> int | None:
        if self._stopped:
            return None
        return os.dup(self._namespaces.fds[NAMESPACES.index("net")])

    async def kill_leftovers(self) -> bool:
        # (an init ends by itself once nothing is left in its pid namespace)
        await self._cgroup.kill_leaves(keep=[p.leaf for p in self._running])
        return True

    def limit_events(self) -> dict[str, int]:
        return {} if self._limits is None else self._limits.events()

    async def stop(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._stopped:
                return
            self._stopped = True
            self.first_done.set()
            self._close_waiting(self._waiting)
            self._namespaces.close()  # the namespaces go with their last process
            self._forget_init()
            await self._cgroup.kill_leaves(kinds="*")
            for fd in self._limit_fds:
                os.close(fd)
            self._limit_fds = []
            self._task_group.start_soon(self._remove_cgroups)

    async def _remove_cgroups(self) -> None:
        """Once the last processes are gone (asynchronously, after the kill): in the
        background, not to hold up a stop (a killed server's next one sweeps them)."""
        if self._hold_fd >= 0:
            os.close(self._hold_fd)
            self._hold_fd = -1
        for _ in range(500):
            if self._cgroup.remove() and (self._limits is None or self._limits.remove()):
                return
            await anyio.sleep(0.01)
        _log.warning("the sandbox's cgroups are still busy; the next server removes them")


def _error_number(line: str | None) -> int | None:
    """The errno of a status line ``error ERRNO ...``."""
    if line is None or not line.startswith("error "):
        return None
    try:
        return int(line.split(" ", 2)[1])
    except (IndexError, ValueError):
        return None


def _refusal(line: str | None, *, stopped: bool) -> RuntimeError_:
    """The error a launcher's first status line (not ``ok``) stands for."""
    if stopped:  # (whatever its launcher met: the cgroups it was to start in were gone...)
        return SandboxGone("cannot start the command: the sandbox stopped")
    if line is None or not line.startswith("error "):
        return RuntimeError_("cannot start the command: the launcher ended without a word")
    number, _, rest = line[6:].partition(" ")
    where, _, message = rest.partition(" ")
    if where == "workdir":
        return BadWorkdir(message)
    if number == str(errno.EAGAIN):
        return ForkRefused(f"cannot start the command: {message}")
    return RuntimeError_(f"cannot start the command: {message}")
