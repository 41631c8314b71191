"""The bubblewrap runtime: each sandbox is one long-lived bwrap process tree.

``start`` launches ``bwrap`` with every namespace unshared and the agent (``_agent.py``) as its
command; each exec is spawned by that agent, so background jobs and ``/tmp`` live until the
sandbox stops (``$HOME`` too when the sandbox keeps it; else each command and each session
gets an empty one of its own). Inside, the sandbox sees ``/usr`` (and the merged-usr links)
read-only, a few files of ``/etc`` read-only, a generated ``passwd``/``group``/``hosts``, fresh
``/proc``, a read-only ``/dev`` with a sized ``/dev/shm``, sized ``/tmp`` and ``/home`` tmpfs
(``_limits.tmpfs_sizes``), and its workspace at ``/workspace``. It runs as uid 1000 with no
capabilities, no network, its own pid/ipc/uts namespaces, a new session and a seccomp filter
that refuses ptrace and its kin (``_seccomp.py``); the agent starts each command in a Landlock
domain of its own. The agent is the sandbox's pid 1 (no bwrap monitor inside), and the
sandbox cannot create user namespaces.

On the host, a sandbox's processes run as an unprivileged uid of its own (``spec.host_uid``,
when the server runs as root; the gid is shared by every sandbox): no root-owned file, sysctl
or device node counts them as its owner, and host limits per user (RLIMIT_NPROC, which the
agent sets to ``spec.max_processes``) are the sandbox's alone. ``/proc/sys`` is read-only and
``/etc/ssl/private`` is not bound all the same. Each run of a sandbox has cgroups of its own
(named for the sandbox and the run), so that a run that died leaves nothing in the next one's
way.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from ..types import ResourceLimits
from ._agent_client import AGENT_SOURCE, AgentConnection
from ._cgroup import SandboxCgroup, find_cgroup2_root, sweep_dead
from ._held import HeldNamespaces, HeldSandbox, LaunchSettings, give_to_sandbox
from ._held_pool import HeldPool
from ._limits import SandboxLimits, find_limit_cgroups, tmpfs_sizes
from ._processes import reap, spawn
from ._seccomp import compile_filter, native_arch
from ._static_helpers import FIX, HelperUnavailable
from ._static_helpers import build as build_helper
from ._waiting_launcher import StartAhead, WaitingLauncher
from .base import (
    WORKSPACE,
    CommandSpec,
    Prepared,
    Process,
    RawSocketWatch,
    RuntimeError_,
    SandboxSpec,
)

SANDBOX_UID = 1000
# Where a sandbox finds the bash its sessions run (see ``SandboxHandle.session_bash``).
SESSION_BASH = "/run/agentfense/bash"
# The agent's OOM score adjustment where the server may lower it (CAP_SYS_RESOURCE); its
# commands start at a higher one anyway (``_agent.COMMAND_OOM_SCORE_ADJ``).
AGENT_OOM_SCORE_ADJ = -999
_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC_ENTRIES = (
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "ssl/certs",  # not "ssl": ssl/private holds the host's private keys
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "mime.types",
    "nsswitch.conf",
    "debian_version",
    "os-release",
    "bash.bashrc",
    "profile",
    "inputrc",
    "terminfo",
    "python3",
    "python3.11",
)


_log = logging.getLogger(__name__)
_SYS_LANDLOCK_CREATE_RULESET = 444  # x86_64 and aarch64 alike


@functools.cache
def _bwrap_has_option(option: str) -> bool:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    try:
        done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return option in done.stdout


def _generated_etc(directory: Path) -> dict[str, Path]:
    files = {
        "passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/home/sandbox:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost\n",
        "hostname": "sandbox\n",
        # A workspace bound straight from the codebase (a policy that reads everything) is
        # owned by a uid the sandbox does not know: git must not call that dubious.
        "gitconfig": "[safe]\n\tdirectory = *\n",
    }
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o644)
        paths[name] = path
    return paths


@functools.cache
def _system_args(etc_dir: Path) -> tuple[str, ...]:
    """The host's system directories and ``/etc`` files, and the generated ones (written
    into ``etc_dir``): once per runtime, not at each sandbox's start (~3 ms)."""
    args: list[str] = []
    root = Path("/")
    for name in _SYSTEM_DIRS:
        path = root / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{name}"]
    # bwrap makes a bind's missing parents mode 0700: as root (no user namespace), the
    # sandbox could not look into them.
    for directory in ("/etc", "/etc/ssl", "/run", "/run/agentfense"):
        args += ["--perms", "0755", "--dir", directory]
    for name in _ETC_ENTRIES:
        path = root / "etc" / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/etc/{name}"]
        elif path.exists():
            args += ["--ro-bind", str(path), f"/etc/{name}"]
    for name, path in _generated_etc(etc_dir).items():
        args += ["--ro-bind", str(path), f"/etc/{name}"]
    return tuple(args)


def bwrap_isolation_args(
    etc_dir: Path, sizes: Mapping[str, int] | None = None, *, user_namespace: bool = True
) -> list[str]:
    """Everything but the workspace and the command: shared with the benchmark's raw bwrap.
    ``sizes``: the size of each tmpfs by path (``_limits.tmpfs_sizes``), else the kernel's.
    Without ``user_namespace``, bwrap (run as root) makes the namespaces a held sandbox
    keeps (``_held``), and no user namespace: each command gets one of its own there."""

    def tmpfs(path: str) -> list[str]:
        size = (sizes or {}).get(path)
        return ([] if size is None else ["--size", str(size)]) + ["--tmpfs", path]

    args = [
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--cap-drop",
        "ALL",
        "--hostname",
        "sandbox",
        "--clearenv",
    ]
    if not user_namespace:
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    else:
        args += ["--unshare-all", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        if _bwrap_has_option("--disable-userns"):  # bubblewrap 0.8 and later
            args += ["--unshare-user", "--disable-userns"]
    args += _system_args(etc_dir)
    args += [
        "--proc",
        "/proc",
        # bwrap covers these only when it finds them writable by access(), which misses the
        # sysctls a sandbox mapped to the host's uid 0 can write (kernel.core_pattern...).
        "--ro-bind",
        "/proc/sys",
        "/proc/sys",
        "--ro-bind-try",
        "/proc/sysrq-trigger",
        "/proc/sysrq-trigger",
        "--dev",
        "/dev",
        *tmpfs("/dev/shm"),
        "--remount-ro",  # (/dev alone: its shm and pts are mounts of their own)
        "/dev",
        *tmpfs("/tmp"),
        *tmpfs("/home"),
        "--dir",
        "/home/sandbox",
        "--chmod",
        "0700",
        "/home/sandbox",
    ]
    return args


def _exec_only_copy(program: str | None, directory: Path) -> Path | None:
    """A copy of ``program`` that may be run but not read (mode 0111): the kernel makes
    whoever runs it non-dumpable. None when there is no such program or no room for it."""
    if program is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / Path(program).name
    partial = directory / f".{target.name}.partial"
    try:
        shutil.copyfile(program, partial)
        partial.chmod(0o111)
        partial.replace(target)
    except OSError as exc:
        _log.warning("sessions get the sandbox's own bash: cannot copy %s (%s)", program, exc)
        return None
    return target


class BwrapSandbox:
    """A running bwrap sandbox; implements ``runtimes.base.SandboxHandle``."""

    def __init__(
        self,
        process: anyio.abc.Process,
        agent: AgentConnection,
        cgroup: SandboxCgroup | None,
        limits: SandboxLimits | None,
        task_group: anyio.abc.TaskGroup,
        session_bash: str | None,
    ) -> None:
        self._session_bash = session_bash
        self._process = process
        self._agent = agent
        self._cgroup = cgroup
        self._limits = limits
        self._task_group = task_group

    @property
    def alive(self) -> bool:
        return not self._agent.closed.is_set()

    @property
    def session_bash(self) -> str | None:
        return self._session_bash

    async def spawn(self, command: CommandSpec) -> Process:
        return await self._agent.spawn(command)

    async def kill_leftovers(self) -> bool:
        if self._limits is None or self._cgroup is None:
            return False
        await self._cgroup.kill_leaves(keep=self._agent.running_leaves())
        return True

    def network_namespace(self) -> int | None:
        return None  # (a server not root cannot join its namespaces: no network)

    def watch_raw_sockets(self, take: RawSocketWatch) -> bool:
        return False  # (nor has it a network whose log would say so)

    def limit_events(self) -> dict[str, int]:
        return {} if self._limits is None else self._limits.events()

    async def stop(self) -> None:
        with anyio.CancelScope(shield=True):
            self._agent.shutdown()
            if self._cgroup is not None:
                await self._cgroup.kill_leaves()
            with anyio.move_on_after(5):
                await self._agent.closed.wait()
                await self._process.wait()
            if self._process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(signal.SIGKILL)
                await self._process.wait()
            if self._cgroup is not None or self._limits is not None:
                self._task_group.start_soon(self._remove_cgroups)

    async def _remove_cgroups(self) -> None:
        """Once the pid namespace's last processes are gone (asynchronously, after the agent):
        in the background, not to hold up a stop (a killed server's next one sweeps them)."""
        for _ in range(500):
            cgroup_gone = self._cgroup is None or self._cgroup.remove()
            if cgroup_gone and (self._limits is None or self._limits.remove()):
                return
            await anyio.sleep(0.01)
        _log.warning("the sandbox's cgroups are still busy; the next server removes them")


class BwrapRuntime:
    """Starts sandboxes with bubblewrap. ``state_dir`` holds generated files (``/etc`` parts)."""

    name = "bwrap"

    def __init__(
        self,
        state_dir: Path,
        *,
        python: str = "/usr/bin/python3",
    ) -> None:
        self._etc_dir = state_dir / "bwrap-etc"
        self._log_dir = state_dir / "logs"
        self._python = python
        self._cgroup_root = find_cgroup2_root() if os.geteuid() == 0 else None
        self._limit_cgroups = find_limit_cgroups()
        # The sandboxes whose deltas are left died with a killed predecessor (taken now,
        # before this server makes any of its own).
        deltas = state_dir / "deltas"
        self._dead = [p.name for p in deltas.glob("sb_*")] if deltas.is_dir() else []
        self._bwrap = shutil.which("bwrap")
        for option in ("--disable-userns", "--size"):  # once, here: not at each sandbox start
            _bwrap_has_option(option)
        self._session_bash = _exec_only_copy(shutil.which("bash"), state_dir / "bwrap-bin")
        self._bin_dir = state_dir / "bwrap-bin"
        # The launcher (``_held``): built once, at the server's start; None until then, and
        # where it cannot be (a server not root, no cgroup v2, no compiler).
        self._launcher: Path | None = None
        self._launcher_known = False
        self._launcher_lock = anyio.Lock()
        self._held_seccomp = -1  # the held sandboxes' filter, one memfd for all
        self._pool = HeldPool(self._build_ahead)
        abi = _landlock_abi()
        if abi < 2:
            _log.warning(
                "this kernel has no Landlock (ABI 2 or later): a process one command of a "
                "sandbox leaves behind can read the environment and memory of that sandbox's "
                "later commands"
            )

    def check(self) -> str | None:
        """Why this runtime cannot start sandboxes here, or None when it can."""
        if self._bwrap is None:
            return "bubblewrap (bwrap) is not installed; install the 'bubblewrap' package"
        if not Path(self._python).exists():
            return f"{self._python} is missing; sandboxes need Python 3 on the host's /usr"
        if not _bwrap_has_option("--size"):
            return (
                "this bubblewrap has no --size option, which sizes the sandboxes' tmpfs; "
                "install bubblewrap 0.8 or later"
            )
        if native_arch() is None:
            return (
                "the bwrap runtime's seccomp filter knows x86_64 and aarch64 only, "
                f"not this host's {os.uname().machine}"
            )
        return None

    async def problem(self, image: str, resources: ResourceLimits) -> str | None:
        """Why a sandbox cannot run here (bwrap runs the host's ``/usr``: no image)."""
        problem = self.check()
        if problem is None and not resources.is_empty:
            problem = self.limits_problem()
        return problem

    async def remove_leftovers(self) -> None:
        """Remove the cgroups of the sandboxes that died with a killed predecessor (and build
        the launcher, before the first sandbox needs it)."""
        await self._find_launcher()
        dead, self._dead = self._dead, []
        if self._cgroup_root is None:
            return
        limits = list(self._limit_cgroups.roots.values()) if self._limit_cgroups else []
        swept = await anyio.to_thread.run_sync(
            functools.partial(sweep_dead, self._cgroup_root, dead=dead, roots=limits)
        )
        if swept:
            _log.info("removed the cgroups of %d sandboxes gone with a killed server", swept)

    def close(self) -> None:
        """Let go of the sets built ahead and the held sandboxes' seccomp filter (its
        sandboxes are gone)."""
        self._pool.close()
        if self._held_seccomp >= 0:
            os.close(self._held_seccomp)
            self._held_seccomp = -1

    async def _find_launcher(self) -> Path | None:
        """The launcher, built at the first call, where sandboxes can be held (as root, with
        cgroup v2); None where not: each sandbox then has an agent process (``_agent``)."""
        async with self._launcher_lock:
            if self._launcher_known:
                return self._launcher
            self._launcher_known = True
            if self._cgroup_root is None or native_arch() is None:
                return None
            try:
                self._launcher = await anyio.to_thread.run_sync(
                    build_helper, "launcher", self._bin_dir
                )
            except HelperUnavailable as exc:
                _log.warning("each idle bwrap sandbox keeps two processes: %s (%s)", exc, FIX)
                return None
            self._held_seccomp = _filter_fd(new_user_namespaces=False)
            return self._launcher

    def limits_problem(self) -> str | None:
        """Why this host cannot enforce resource limits on sandboxes, or None when it can."""
        if self._limit_cgroups is not None:
            return None
        if os.geteuid() != 0:
            return "resource limits need the server to run as root (it manages cgroups)"
        return (
            "resource limits need cgroups with the memory, cpu and pids controllers, "
            "which this host does not offer"
        )

    @staticmethod
    def _as_host_user(spec: SandboxSpec) -> dict[str, Any]:
        if os.geteuid() != 0 or spec.host_uid == 0:
            return {}
        return {"user": spec.host_uid, "group": spec.host_gid, "extra_groups": []}

    def prepare(
        self, sandbox_id: str, resources: ResourceLimits, task_group: anyio.abc.TaskGroup
    ) -> StartAhead | None:
        """A held sandbox's cgroups and limits, and the launcher waiting in them, begun
        while the server still makes the sandbox's view: the launcher's move into the limit
        cgroups takes a grace period of the kernel's (``_waiting_launcher``). None where
        sandboxes are not held, or when they cannot be made (the start says why)."""
        if self._launcher is None or self.check() is not None:
            return None
        try:
            return self._start_ahead(sandbox_id, resources, self._launcher, task_group)
        except (OSError, RuntimeError_):
            return None

    def _start_ahead(
        self,
        sandbox_id: str,
        resources: ResourceLimits,
        launcher: Path,
        task_group: anyio.abc.TaskGroup,
    ) -> StartAhead:
        assert self._cgroup_root is not None  # (the launcher needs it)
        # Cgroups of this run's own: whatever a run that died left is not in its way.
        run = f"{sandbox_id}.{secrets.token_hex(4)}"
        leaves = SandboxCgroup(self._cgroup_root, run)
        limits, limit_fds = self._limits(resources, run, leaves)
        ahead = StartAhead(leaves, limits, limit_fds, None, task_group)
        try:
            ahead.waiting = WaitingLauncher.start(launcher, limit_fds, leaves)
        except BaseException:
            ahead.release()  # (the limit cgroups and their fds, made above)
            raise
        return ahead

    async def start(
        self,
        spec: SandboxSpec,
        task_group: anyio.abc.TaskGroup,
        prepared: Prepared | None = None,
    ) -> HeldSandbox | BwrapSandbox:
        """Start the sandbox: held by fds where the launcher runs (``_held``), else with an
        agent whose reader runs in ``task_group`` until it stops."""
        ahead = prepared if isinstance(prepared, StartAhead) else None
        if prepared is not None and ahead is None:
            prepared.release()
        problem = self.check()
        try:
            launcher = None if problem is not None else await self._find_launcher()
        except BaseException:
            if ahead is not None:
                ahead.release()
            raise
        if launcher is not None:
            ahead = ahead or self._start_ahead(
                spec.sandbox_id, spec.resources, launcher, task_group
            )
            try:
                return await self._start_held(spec, task_group, launcher, ahead)
            except BaseException:
                ahead.release()
                raise
        if ahead is not None:
            ahead.release()
        if problem is not None:
            raise RuntimeError_(problem)
        run = f"{spec.sandbox_id}.{secrets.token_hex(4)}"
        cgroup = (
            SandboxCgroup(self._cgroup_root, run, owner_uid=spec.host_uid)
            if self._cgroup_root
            else None
        )
        limits, join_fds = self._limits(spec.resources, run, cgroup)
        return await self._start_agent(spec, task_group, cgroup, limits, join_fds)

    def _limits(
        self, resources: ResourceLimits, run: str, cgroup: SandboxCgroup | None
    ) -> tuple[SandboxLimits | None, list[int]]:
        """The sandbox's limit cgroups and write fds on their ``cgroup.procs``, if it has
        limits; RuntimeError_ (with ``cgroup`` removed) when they cannot be."""
        if resources.is_empty:
            return None, []
        problem = self.limits_problem()
        if problem is None:
            assert self._limit_cgroups is not None
            limits = SandboxLimits(self._limit_cgroups, run, resources)
            try:
                return limits, limits.create()
            except OSError as exc:
                problem = f"cannot set the resource limits: {exc}"
        if cgroup is not None:
            cgroup.remove()
        raise RuntimeError_(problem)

    def _workspace_args(self, spec: SandboxSpec | None) -> list[str]:
        """``/workspace`` (empty for a set built ahead: no ``spec``), the sessions' bash, and
        ``/`` read-only."""
        workspace = ["--perms", "0755", "--dir", WORKSPACE]
        if spec is not None:
            workspace = ["--bind", str(spec.workspace), WORKSPACE]
            if spec.read_only_source is not None:
                workspace = ["--ro-bind", str(spec.read_only_source), WORKSPACE]
        if self._session_bash is not None:
            workspace += ["--ro-bind", str(self._session_bash), SESSION_BASH]
        return [*workspace, "--remount-ro", "/"]

    async def _start_held(
        self,
        spec: SandboxSpec,
        task_group: anyio.abc.TaskGroup,
        launcher: Path,
        ahead: StartAhead,
    ) -> HeldSandbox:
        """A set of namespaces built ahead (the pool's), given the sandbox's files, or else
        built now, with what the start began (``ahead``); then the pool is topped up, in the
        background, once the sandbox's first command is done."""
        sizes = tmpfs_sizes(spec.resources.memory_bytes or 0, spec.tmpfs_bytes)
        source = spec.read_only_source or spec.workspace
        namespaces = self._pool.take(sizes)
        if namespaces is not None:
            try:
                await self._attach(launcher, namespaces, source, spec)
            except RuntimeError_ as exc:  # (a kernel without the new mount API...)
                namespaces.close()
                namespaces = None
                self._pool.close()
                _log.warning("sandboxes are no longer built ahead: %s", exc)
            except BaseException:
                namespaces.close()
                raise
        if namespaces is None:
            namespaces = await self._build(launcher, sizes, task_group, spec)
        settings = LaunchSettings(
            launcher=launcher,
            seccomp_fd=self._held_seccomp,
            uid=spec.host_uid,
            gid=spec.host_gid,
            nproc=spec.max_processes,
            fresh_home=not spec.keep_home,
        )
        try:
            sandbox = HeldSandbox(
                namespaces,
                settings,
                ahead.leaves,
                ahead.limits,
                ahead.limit_fds,
                task_group,
                SESSION_BASH if self._session_bash else None,
                ahead.waiting,
            )
        except BaseException:
            namespaces.close()
            raise
        # (once its first command is done: a build's mounts would hold up that command's)
        self._pool.want(sizes, task_group, after=sandbox.first_done)
        return sandbox

    async def _build(
        self,
        launcher: Path,
        sizes: Mapping[str, int],
        task_group: anyio.abc.TaskGroup,
        spec: SandboxSpec | None,
    ) -> HeldNamespaces:
        """bwrap builds the namespaces with the launcher's ``hold`` as its command, which says
        ready once every mount is in place; the server keeps the namespaces' fds, gives the
        tmpfs to the sandbox's uid (one built ahead, with no ``spec``: at attach), and lets
        bwrap go (its exit is not waited for)."""
        assert self._bwrap is not None
        log_path = self._log_dir / (f"{spec.sandbox_id}.log" if spec else "ahead.log")
        made: list[int] = []
        try:
            ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
            made += [ready_r, ready_w]
            block_r, block_w = os.pipe2(os.O_CLOEXEC)
            made += [block_r, block_w]
            binary = os.open(launcher, os.O_PATH | os.O_CLOEXEC)  # bound nowhere in the sandbox
        except OSError as exc:  # (no descriptor left, say: none of these kept)
            for fd in made:
                os.close(fd)
            raise RuntimeError_(f"cannot run bwrap: {exc.strerror}") from None
        # One built ahead (no start waits for it) takes only the CPU time nothing else wants.
        ahead = [] if spec is not None else [str(launcher), "idle"]
        argv = [
            *ahead,
            self._bwrap,
            *bwrap_isolation_args(self._etc_dir, sizes, user_namespace=False),
            *self._workspace_args(spec),  # (no --chdir: the view refuses root; commands cd)
            "--",
            f"/proc/self/fd/{binary}",
            "hold",
            str(ready_w),
            str(block_r),
        ]
        self._log_dir.mkdir(parents=True, exist_ok=True)
        try:
            with log_path.open("ab") as log:
                bwrap = spawn(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(ready_w, block_r, binary),
                    env={},  # none of the server's environment reaches the sandbox
                )
        except OSError as exc:
            os.close(ready_r)
            os.close(block_w)
            raise RuntimeError_(f"cannot run bwrap: {exc.strerror}") from None
        finally:
            for fd in (ready_w, block_r, binary):
                os.close(fd)
        namespaces: HeldNamespaces | None = None
        try:
            with anyio.move_on_after(10):
                if await _read_byte(ready_r):
                    holder = _holder_pid(bwrap.pid)
                    namespaces = HeldNamespaces(holder)
                    if spec is not None:
                        give_to_sandbox(holder, spec.host_uid, spec.host_gid)
        except BaseException:
            if namespaces is not None:
                namespaces.close()
            with anyio.CancelScope(shield=True):
                await _kill_bwrap(bwrap.pid)
            raise
        finally:
            os.close(ready_r)
            os.close(block_w)  # the holder and bwrap exit
            task_group.start_soon(reap, bwrap)
        if namespaces is None:
            await _kill_bwrap(bwrap.pid)
            detail = _tail(log_path)
            raise RuntimeError_(f"the sandbox failed to start: {detail or 'bwrap said nothing'}")
        return namespaces

    async def _build_ahead(
        self, sizes: Mapping[str, int], task_group: anyio.abc.TaskGroup
    ) -> HeldNamespaces:
        """A set for the pool: an empty ``/workspace``, the tmpfs root's until attach."""
        assert self._launcher is not None
        return await self._build(self._launcher, sizes, task_group, None)

    async def _attach(
        self, launcher: Path, namespaces: HeldNamespaces, source: Path, spec: SandboxSpec
    ) -> None:
        """Give a pooled set of namespaces the sandbox's files at ``/workspace`` (read-only
        for a read-only source) and its tmpfs to the sandbox's uid (``launcher attach``)."""
        mnt = namespaces.fds[0]
        errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
        try:
            attaching = spawn(
                [
                    "attach",
                    "attach",
                    str(mnt),
                    str(source),
                    "ro" if spec.read_only_source is not None else "rw",
                    str(spec.host_uid),
                    str(spec.host_gid),
                ],
                executable=launcher,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors_w,
                pass_fds=(mnt,),
                env={},
            )
        except OSError as exc:
            os.close(errors_r)
            raise RuntimeError_(f"cannot attach the sandbox's files: {exc.strerror}") from None
        finally:
            os.close(errors_w)
        try:
            with anyio.CancelScope(shield=True):
                await reap(attaching)
            os.set_blocking(errors_r, False)
            try:
                said = os.read(errors_r, 2000).decode(errors="replace").strip()
            except BlockingIOError:
                said = ""
        finally:
            os.close(errors_r)
        if attaching.returncode != 0:
            raise RuntimeError_(f"the sandbox failed to start: {said or 'attach failed'}")

    async def _start_agent(
        self,
        spec: SandboxSpec,
        task_group: anyio.abc.TaskGroup,
        cgroup: SandboxCgroup | None,
        limits: SandboxLimits | None,
        join_fds: list[int],
    ) -> BwrapSandbox:
        """bwrap with the agent (``_agent``) as the sandbox's pid 1."""
        assert self._bwrap is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if cgroup is not None:
            join_fds.append(cgroup.agent_join_fd())
        seccomp = _filter_fd()
        options = {"nproc": spec.max_processes, "fresh_home": not spec.keep_home}
        sizes = tmpfs_sizes(spec.resources.memory_bytes or 0, spec.tmpfs_bytes)
        argv = [
            self._bwrap,
            *bwrap_isolation_args(self._etc_dir, sizes),
            *self._workspace_args(spec),
            "--chdir",
            WORKSPACE,
            "--seccomp",
            str(seccomp),
            "--",
            self._python,
            "-I",
            "-S",
            "-c",
            AGENT_SOURCE,
            str(theirs.fileno()),
            json.dumps(options),
            *(str(fd) for fd in join_fds),
        ]
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"{spec.sandbox_id}.log"
        try:
            with log_path.open("ab") as log:
                process = await anyio.open_process(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(theirs.fileno(), seccomp, *join_fds),
                    env={},  # none of the server's environment reaches the sandbox
                    **self._as_host_user(spec),
                )
        except OSError as exc:
            ours.close()
            if limits is not None:
                limits.remove()
            raise RuntimeError_(f"cannot run bwrap: {exc.strerror}") from None
        finally:
            theirs.close()
            for fd in (seccomp, *join_fds):
                os.close(fd)
        agent = AgentConnection(ours, cgroup)
        task_group.start_soon(agent.run)
        sandbox = BwrapSandbox(
            process, agent, cgroup, limits, task_group, SESSION_BASH if self._session_bash else None
        )
        try:
            with anyio.move_on_after(10):
                await _first_of(agent.ready.wait, agent.closed.wait)
        except BaseException:  # cancelled: nobody else knows of these processes
            await sandbox.stop()
            raise
        if not agent.ready.is_set():
            await sandbox.stop()
            detail = log_path.read_text(errors="replace").strip()[-2000:]
            raise RuntimeError_(f"the sandbox failed to start: {detail or 'bwrap said nothing'}")
        _lower_oom_score(process.pid)
        return sandbox


def _tail(log: Path) -> str:
    """The end of what bwrap wrote to ``log``."""
    return log.read_text(errors="replace").strip()[-2000:]


async def _read_byte(fd: int) -> bytes:
    """One byte from a pipe (b"" at EOF), without blocking the loop."""
    os.set_blocking(fd, False)
    while True:
        try:
            return os.read(fd, 1)
        except BlockingIOError:
            await anyio.wait_readable(fd)


async def _kill_bwrap(pid: int) -> None:
    """Kill a bwrap that has not let its sandbox's pid 1 go, and that child. bwrap's child
    first waits on an eventfd for bwrap to map its ids, and an eventfd has no end of file:
    bwrap killed before it writes left the child waiting forever, a process of the host's
    (seen after starts cancelled as bwrap began). Stopped first, bwrap makes no child while
    its own are killed; but the stop comes only when bwrap next leaves the kernel, and a
    child it is making meanwhile is not among its children yet (killed as soon as it was
    sent SIGSTOP, bwrap once left one orphaned in CI). So its stop is waited for: polled
    (``WNOWAIT``: its reaper collects it), as one built ahead runs under ``SCHED_IDLE``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    for _ in range(5000):  # (SIGSTOP cannot be refused: only a stuck kernel holds it up)
        if _stopped(pid):
            break
        await anyio.sleep(0.001)
    _kill_with_children(pid)


def _stopped(pid: int) -> bool:
    """Whether our child ``pid`` has stopped or ended (neither state consumed)."""
    try:
        flags = os.WSTOPPED | os.WEXITED | os.WNOWAIT | os.WNOHANG
        return os.waitid(os.P_PID, pid, flags) is not None
    except ChildProcessError:
        return True


def _kill_with_children(pid: int) -> None:
    with contextlib.suppress(OSError, ValueError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _holder_pid(bwrap_pid: int) -> int:
    """The sandbox's pid 1 (bwrap's one child: ``--as-pid-1``)."""
    children = Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children").read_text().split()
    if not children:
        raise RuntimeError_("the sandbox failed to start: bwrap has no child")
    return int(children[0])


def _landlock_abi() -> int:
    """The Landlock ABI of this kernel (the sandboxes' too), 0 without Landlock."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), 1)  # VERSION
    return max(int(abi), 0)


def _filter_fd(*, new_user_namespaces: bool = True) -> int:
    """A readable fd holding the seccomp filter, for ``bwrap --seccomp`` (and the launcher,
    which refuses new user namespaces with it)."""
    arch = native_arch()
    assert arch is not None  # (``check`` refuses other machines)
    fd = os.memfd_create("agentfense-seccomp", os.MFD_CLOEXEC)
    os.write(fd, compile_filter(arch, new_user_namespaces=new_user_namespaces))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _lower_oom_score(bwrap_pid: int) -> None:
    """Make the agent (bwrap's child) the OOM killer's last choice, when the server may."""
    if os.geteuid() != 0:
        return
    try:
        children = Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children").read_text().split()
        for pid in children:
            Path(f"/proc/{pid}/oom_score_adj").write_text(str(AGENT_OOM_SCORE_ADJ))
    except OSError as exc:  # (gone meanwhile: the sandbox is dead, its next use says so)
        _log.debug("cannot lower the agent's OOM score: %s", exc)


async def _first_of(*waits: Any) -> None:
    async with anyio.create_task_group() as tg:

        async def one(wait: Any) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(one, wait)
