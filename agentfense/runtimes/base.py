"""What the server asks of a runtime: start a long-lived sandbox, spawn commands inside it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio.abc

from ..types import ResourceLimits


class RuntimeError_(Exception):
    """A runtime could not do what was asked (the message says why, as a sentence)."""


class ForkRefused(RuntimeError_):
    """The sandbox could not start another process (its process limit is reached)."""


class SandboxGone(RuntimeError_):
    """The sandbox is not running any more (its processes died or were stopped)."""


class BadWorkdir(RuntimeError_):
    """The command's working directory does not exist, or is no directory, in the sandbox."""


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    sandbox_id: str
    workspace: Path  # the sandbox's view of its codebase (the permission filesystem)
    host_uid: int  # its processes' uid and gid on the host (its own uid; a shared gid)
    host_gid: int
    image: str = ""
    resources: ResourceLimits = field(default_factory=ResourceLimits)
    # Whether ``$HOME`` is one directory for every command (else each command, and each
    # session, gets an empty one of its own, removed when it exits).
    keep_home: bool = False
    # The most processes its uid may have (RLIMIT_NPROC; 0: the server's own limit).
    max_processes: int = 0
    # The size of its /tmp and /home tmpfs without a memory limit (see ``_limits.tmpfs_sizes``).
    tmpfs_bytes: int = 512 * 1024 * 1024
    # When the policy lets the sandbox read every path and nothing more, its workspace is
    # this directory (the codebase's files) bound read-only: the kernel enforces that policy
    # whole, at native speed, with no permission filesystem in the way.
    read_only_source: Path | None = None


@dataclass(frozen=True, slots=True)
class CommandSpec:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str


# A command's raw-socket filter's listener, taken (``SandboxHandle.watch_raw_sockets``); what
# to call when its command's own process has ended.
RawSocketWatch = Callable[[int], Callable[[], None]]


class Process(Protocol):
    """One command running in a sandbox. The runtime owns the pipes' other ends."""

    stdin_fd: int
    stdout_fd: int
    stderr_fd: int

    async def wait(self) -> int:
        """Wait for the command's own process to exit; its exit code (128+N for signal N)."""
        ...

    async def kill(self) -> None:
        """Kill every process the command started, then release what it held."""
        ...

    def members(self) -> frozenset[int] | None:
        """Every process the command has now (its own and its children's, wherever they went),
        or None where the runtime cannot tell them apart."""
        ...

    async def kill_except(self, keep: frozenset[int], *, interrupt: int | None = None) -> None:
        """Kill the command's processes but ``keep`` (taken from :meth:`members` earlier),
        all frozen meanwhile; ``interrupt`` (one of ``keep``) gets SIGINT and SIGCONT."""
        ...

    async def release(self) -> None:
        """Release bookkeeping after a normal exit (its background jobs keep running)."""
        ...


class SandboxHandle(Protocol):
    @property
    def alive(self) -> bool: ...

    @property
    def session_bash(self) -> str | None:
        """A bash in the sandbox that its processes cannot look into (executable but not
        readable, so the kernel makes it non-dumpable: no ptrace, no ``/proc/<pid>/fd`` or
        ``mem`` for others of the same uid), for session shells; None where there is none."""
        ...

    async def spawn(self, command: CommandSpec) -> Process:
        """Start ``command``; ForkRefused when the sandbox's process limit is reached,
        SandboxGone when the sandbox is not running any more, BadWorkdir for its cwd."""
        ...

    async def kill_leftovers(self) -> bool:
        """Kill what earlier commands left running (not the running commands, nor the
        sessions); whether the runtime could tell them apart and did."""
        ...

    def limit_events(self) -> dict[str, int]:
        """How often each resource limit has struck in the sandbox so far, by name
        (``memory``: processes killed, ``pids``: forks refused); {} without limits."""
        ...

    def network_namespace(self) -> int | None:
        """A new fd on the sandbox's network namespace (the caller closes it), for the
        server to put a proxy there; None where the server cannot join it."""
        ...

    def watch_raw_sockets(self, take: RawSocketWatch) -> bool:
        """From now on, every command started gets a seccomp filter that hands its processes'
        attempts to open a raw or packet socket to the server (``runtimes/raw_sockets.c``):
        the listener of each goes to ``take``, which owns it, and the function it returns is
        called once the command's own process has ended. False where it cannot."""
        ...

    async def stop(self) -> None:
        """Kill every process of the sandbox and release its resources."""
        ...


class Prepared(Protocol):
    """What a runtime began ahead of a sandbox's start (``Runtime.prepare``)."""

    def release(self) -> None:
        """Let it go unused: the sandbox will not start with it."""
        ...


class Runtime(Protocol):
    """What starts sandboxes of one kind; ``lookup.Runtimes`` finds the one a sandbox asks
    for."""

    def limits_problem(self) -> str | None:
        """Why this runtime cannot enforce resource limits here (a sentence), or None."""
        ...

    async def problem(self, image: str, resources: ResourceLimits) -> str | None:
        """Why a sandbox of ``image`` under ``resources`` cannot run here, or None."""
        ...

    def prepare(
        self, sandbox_id: str, resources: ResourceLimits, task_group: anyio.abc.TaskGroup
    ) -> Prepared | None:
        """Begin what a start that follows at once can do before the sandbox has its files,
        and that would keep it waiting (its cleanup runs in ``task_group``); None: nothing.
        The start takes it, else it is released."""
        ...

    async def start(
        self,
        spec: SandboxSpec,
        task_group: anyio.abc.TaskGroup,
        prepared: Prepared | None = None,
    ) -> SandboxHandle:
        """Start the sandbox (with what ``prepare`` began for it, which the start owns from
        now on, even when it fails); what watches its processes runs in ``task_group``."""
        ...

    async def remove_leftovers(self) -> None:
        """Remove what a killed predecessor on the same state directory left behind."""
        ...

    def close(self) -> None:
        """Let go of what the runtime holds open (the server stops; its sandboxes are gone)."""
        ...


BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/home/sandbox",
    "LANG": "C.UTF-8",
    "USER": "sandbox",
    "LOGNAME": "sandbox",
}

WORKSPACE = "/workspace"
