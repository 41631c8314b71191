"""A launcher started with a sandbox, in its limit cgroups already, for its first command.

Joining a limit cgroup moves a process, and a move waits for an RCU grace period unless
another move happened a moment before, on a host whose cgroup hierarchy has no
``favordynmods`` (on this 2-core VM: 5 ms idle, 10-20 ms busy; and it holds the kernel's
cgroup lock meanwhile, so no cgroup is made either). A sandbox's first command usually
follows its start at once, so the start begins that wait: it spawns ``launcher wait``
(``launcher.c``), which joins the limit cgroups and waits for one request on a socket, then
becomes that command's ``launcher run``. Unused after ``WAIT_FOR`` seconds, it is let go: an
idle sandbox keeps no process. docs/architecture.md, "Held sandboxes", tells where it fits.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from ._cgroup import SandboxCgroup
from ._limits import SandboxLimits
from ._processes import reap, spawn

WAIT_FOR = 1.0  # seconds a started sandbox's waiting launcher waits for a first command
_MAX_REQUEST = 65536  # bytes (launcher.c's WAIT_MAX_REQUEST): a longer one is spawned anew
_MAX_FDS = 16  # launcher.c's WAIT_MAX_FDS


class WaitingLauncher:
    """One ``launcher wait`` and our end of its socket; used once, or closed."""

    def __init__(
        self, process: subprocess.Popen[bytes], sock: socket.socket, leaves: tuple[Path, Path]
    ) -> None:
        self.process = process
        self.leaves = leaves  # the first command's and its init's
        self._socket: socket.socket | None = sock

    @classmethod
    def start(
        cls, launcher: Path, limit_fds: Sequence[int], cgroup: SandboxCgroup
    ) -> WaitingLauncher | None:
        """Spawn one for a sandbox with limit cgroups (``limit_fds``: write fds on their
        ``cgroup.procs``); None without limits (nothing to join ahead) or when it cannot be
        spawned (the first command then is, as every later one). The first command's leaves
        in ``cgroup`` are made first: while a process moves, the kernel makes no cgroup
        (it waits for the grace period holding the cgroups' lock)."""
        if not limit_fds:
            return None
        made: list[Path] = []
        try:
            made += [cgroup.new_leaf(), cgroup.new_leaf("init")]
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:  # (no descriptor left, say: the caller's limit cgroups stay its own)
            for leaf in made:
                SandboxCgroup.try_remove(leaf)
            return None
        leaves = (made[0], made[1])
        try:
            process = spawn(
                ["init", "wait", str(theirs.fileno()), ",".join(map(str, limit_fds))],
                executable=launcher,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=[theirs.fileno(), *limit_fds],
                env={},
            )
        except OSError:
            ours.close()
            for leaf in leaves:
                SandboxCgroup.try_remove(leaf)
            return None
        finally:
            theirs.close()
        return cls(process, ours, leaves)

    def send(self, run_args: Sequence[str], env: Mapping[str, str], fds: Sequence[int]) -> bool:
        """Make it ``launcher run`` with ``run_args`` (after ``launcher``), ``env``, and
        ``fds`` at 0, 1, 2... (the numbers ``run_args`` names). False, and it is closed, when
        it cannot take them: gone, or a request it would refuse (too long, a NUL, a name with
        ``=``: spawning anew then says what is wrong)."""
        sock, self._socket = self._socket, None
        if sock is None:
            return False
        try:
            strings = [os.fsencode(arg) for arg in ["init", *run_args]]
            for name, value in env.items():
                if "=" in name or not name:
                    return False
                strings.append(os.fsencode(name) + b"=" + os.fsencode(value))
            if any(b"\0" in string for string in strings):
                return False
            payload = b"\0".join([str(len(run_args) + 1).encode(), *strings, b""])
            if len(payload) > _MAX_REQUEST or len(fds) > _MAX_FDS:
                return False
            return socket.send_fds(sock, [payload], list(fds)) == len(payload)
        except (OSError, UnicodeError):
            return False
        finally:
            sock.close()

    def close(self) -> None:
        """Let it go unused (it ends when its socket does)."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()


@dataclass(eq=False)
class StartAhead:
    """What a held sandbox's start begins first (``BwrapRuntime.prepare``, or the start
    itself): its cgroups, its limit cgroups and write fds on their ``cgroup.procs``, and the
    launcher waiting in them. Implements ``base.Prepared``."""

    leaves: SandboxCgroup
    limits: SandboxLimits | None
    limit_fds: list[int]
    waiting: WaitingLauncher | None
    task_group: anyio.abc.TaskGroup

    def release(self) -> None:
        """The sandbox did not start with them: they go (the cgroups once the waiting
        launcher has ended, at once, in the background)."""
        fds, self.limit_fds = self.limit_fds, []
        for fd in fds:
            os.close(fd)
        if self.waiting is None:
            self._remove()
            return
        self.waiting.close()
        self.task_group.start_soon(self._remove_once_gone, self.waiting.process)

    async def _remove_once_gone(self, process: subprocess.Popen[bytes]) -> None:
        with anyio.CancelScope(shield=True):
            await reap(process)
        self._remove()

    def _remove(self) -> None:
        self.leaves.remove()
        if self.limits is not None:
            self.limits.remove()
