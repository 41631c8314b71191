"""The Docker runtime: each sandbox is one container, driven through the Engine API.

The container runs the sandbox's image with its permission view bind-mounted at
``/workspace`` (private propagation: the view is never remounted under a running sandbox),
no network, every capability dropped, ``no-new-privileges``, a seccomp profile of ours
(``_docker_seccomp.py``), sized ``/tmp``, ``/home`` and ``/dev/shm`` tmpfs, the sandbox's own
uid (the view's owner) and RLIMIT_NPROC, its resource limits and labels. Its pid 1 is a shell
that ignores every signal and reaps orphans: the kernel delivers no signal from inside the
container to it, so nothing there can end the container (Docker's init would pass a signal on
to its child). Images are never pulled: a missing image is an error.

Commands are ``docker exec``s, adapted to ``runtimes.base.Process`` by :mod:`._docker_exec`:
each one gets a cgroup leaf of its own under the container's (on the unified hierarchy), so
that a timeout kills every process it started and a session's command can be told apart from
its shell, exactly as on bwrap. Stopping a sandbox removes its container; starting it again
makes a new one on the same view.

Commands are kept apart as on bwrap. Every container has ``/run/agentfense``, a small tmpfs
of root's (0755), with the server's ``confine`` helper bound read-only in it (built at the
first start, see :mod:`._confine`); each command's gate runs the command through it, in a
Landlock domain of its own, so that what one command leaves running can neither look into a
later one (``/proc/<pid>/environ``, ``mem``, ``fd``) nor write into its fresh ``$HOME``. A
session's shell is one command (its commands share its domain), run from an exec-only copy
of the image's bash (else its sh) that a root ``docker exec`` makes there at the first
session's start (plain starts pay nothing): the kernel makes it non-dumpable, so not even
the session's background jobs can open its ``/proc/<pid>/fd``. The container has no
capability: root writes there only as the directory's owner. Without a compiler to build
the helper, commands run unconfined, and the server says so once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import socket
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from ..types import ResourceLimits
from ._cgroup import SandboxCgroup, find_cgroup2_root
from ._confine import FIX, IN_CONTAINER, ConfineUnavailable
from ._confine import build as build_confine
from ._docker_api import ProcessState, created_id
from ._docker_exec import DockerProcess, start_exec
from ._docker_seccomp import security_opt
from ._limits import tmpfs_sizes
from .base import (
    WORKSPACE,
    BadWorkdir,
    CommandSpec,
    ForkRefused,
    Prepared,
    Process,
    RawSocketWatch,
    RuntimeError_,
    SandboxGone,
    SandboxSpec,
)

# A small tmpfs of root's (mode 0755) in every container: the confine helper is bound in it,
# and the first session's start copies the image's shell there, exec-only.
RUN_DIR = "/run/agentfense"
SESSION_BASH = f"{RUN_DIR}/bash"
_RUN_DIR_BYTES = 16 * 1024 * 1024
# Run as root in the container (which has no capability: root writes in RUN_DIR as its
# owner): says which shell it copies, from where, then copies it (mode 0111). (The gate is
# /bin/sh: every image has it; busybox's sh says "sh" for ``command -v sh``.)
_COPY_SHELL = (
    'if p=$(command -v bash) && [ -z "${p%%/*}" ]; then n=bash; else p=/bin/sh n=sh; fi; '
    f'echo "$n $p"; cp "$p" {RUN_DIR}/.$n && chmod 0111 {RUN_DIR}/.$n && '
    f"mv -f {RUN_DIR}/.$n {RUN_DIR}/$n"
)

_log = logging.getLogger(__name__)
_SIGNALS = (
    "HUP INT QUIT ABRT USR1 USR2 PIPE ALRM TERM TSTP TTIN TTOU URG XCPU XFSZ VTALRM PROF WINCH"
)
# pid 1: ignores every signal; ``wait`` reaps any child (the orphans it inherits too).
_KEEPALIVE = ["/bin/sh", "-c", f"trap '' {_SIGNALS}; while :; do sleep 3600 & wait $!; done"]
# The OOM score adjustment of pid 1 where the server may lower it (CAP_SYS_RESOURCE); the
# commands start at a higher one anyway (``_docker_exec``).
PID1_OOM_SCORE_ADJ = -999
CPU_PERIOD_US = 100_000
# The Engine API version spoken: Docker 20.10's (Debian 12's docker.io); later engines speak
# it too. A fixed version needs no request to set up a client (nor leaks one that failed).
DOCKER_API_VERSION = "1.41"


def unix_socket_problem(docker_host: str) -> str | None:
    """Why nothing listens at a ``unix://`` docker host (checked here: the docker library
    leaves its socket open when a connection fails), or None."""
    if not docker_host.startswith("unix://"):
        return None
    path = docker_host.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(2)
            probe.connect(path)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return None


def _docker() -> Any:
    import docker  # the docker package is part of the server's dependencies only

    return docker


class DockerSandbox:
    """A running container; implements ``runtimes.base.SandboxHandle``."""

    def __init__(
        self,
        runtime: DockerRuntime,
        container_id: str,
        pid1: int,
        cgroups: dict[str, Path],
        task_group: anyio.abc.TaskGroup,
        *,
        keep_home: bool,
        confined: bool,
    ) -> None:
        self._runtime = runtime
        self._task_group = task_group
        self.container_id = container_id
        self.keep_home = keep_home
        self.confined = confined  # its commands run through the confine helper
        self.raw_sockets: RawSocketWatch | None = None  # (``watch_raw_sockets``)
        self._session_shell: str | None = None  # (made at the first session's start)
        self._session_shell_lock = anyio.Lock()
        # The container's pid 1, watched: when it is gone (killed from the host), so is the
        # container, and a start makes a new one.
        self._pid1: int | None = None
        self._pid1_number = pid1
        with contextlib.suppress(OSError):
            self._pid1 = os.pidfd_open(pid1)
        self._cgroups = cgroups  # controller ("" for the unified hierarchy) -> its cgroup dir
        unified = cgroups.get("")
        self._leaves = SandboxCgroup.inside(unified) if unified is not None else None
        self._stopped = False
        self._running: set[DockerProcess] = set()

    @property
    def alive(self) -> bool:
        # (its pid fd readable: pid 1 exited)
        return not self._stopped and not (
            self._pid1 is not None and select.select([self._pid1], [], [], 0)[0]
        )

    @property
    def session_bash(self) -> str | None:
        return SESSION_BASH  # a name: what it stands for is made at the first session's start

    async def spawn(self, command: CommandSpec) -> Process:
        if self._stopped:
            raise SandboxGone("the sandbox is not running")
        forks_refused = self.limit_events().get("pids", 0)
        try:
            return await self._start(command)
        except (ForkRefused, BadWorkdir):
            raise
        except RuntimeError_ as exc:
            if "is not running" in str(exc):  # the container died (its keepalive was killed)
                self._stopped = True
                raise SandboxGone("the sandbox's container is not running any more") from None
            if self._pids_full() or self.limit_events().get("pids", 0) > forks_refused:
                # (runc says only that its init pipe was reset, or that a resource is
                # temporarily unavailable: the pids cgroup is certain)
                raise ForkRefused(str(exc)) from None
            raise

    async def kill_leftovers(self) -> bool:
        if self._leaves is None:
            return False
        await self._leaves.kill_leaves(keep=self.running_leaves())
        return True

    async def _start(self, command: CommandSpec) -> DockerProcess:
        if command.argv[0] == SESSION_BASH:
            command = await self._session_command(command)
        process = await start_exec(self._runtime.call, self.container_id, command, self)
        self._running.add(process)
        return process

    def _pids_full(self) -> bool:
        """Whether the container's pids limit is reached (then runc cannot even start an
        exec, and says only that its init pipe was reset)."""
        pids = self._cgroups.get("pids") or self._cgroups.get("")
        if pids is None:
            return False
        try:
            limit = (pids / "pids.max").read_text().strip()
            return limit != "max" and int((pids / "pids.current").read_text()) >= int(limit)
        except (OSError, ValueError):
            return False

    async def _session_command(self, command: CommandSpec) -> CommandSpec:
        """A session's shell: the exec-only copy of the image's bash (or, in an image without
        bash, of its sh) that the first session's start makes, which the kernel makes
        non-dumpable: no process of the sandbox may open its ``/proc/<pid>/fd`` (its script
        and the next command's end marker). Where no copy can be made, the image's own (and
        the next session tries again: a copy made fails only for want of room or processes)."""
        async with self._session_shell_lock:
            shell = self._session_shell
            if shell is None:
                shell, copied = await self._runtime.copy_session_shell(self.container_id)
                if copied:
                    self._session_shell = shell
        return CommandSpec((shell, *command.argv[1:]), command.env, command.cwd)

    def runtime_task_group(self) -> anyio.abc.TaskGroup:
        """Where the copying tasks of its commands run."""
        return self._task_group

    def new_leaf(self) -> tuple[Path, int] | None:
        return None if self._leaves is None else self._leaves.open_command()

    def finished(self, process: DockerProcess) -> None:
        self._running.discard(process)

    def running_leaves(self) -> list[Path]:
        return [p.leaf for p in self._running if p.leaf is not None]

    def limit_events(self) -> dict[str, int]:
        memory = self._cgroups.get("memory") or self._cgroups.get("")
        pids = self._cgroups.get("pids") or self._cgroups.get("")
        events: dict[str, int] = {}
        if memory is not None:
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                if (memory / name).exists():
                    events["memory"] = _counter(memory / name, key)
        if pids is not None and (pids / "pids.events").exists():
            events["pids"] = _counter(pids / "pids.events", "max")
        return events

    def network_namespace(self) -> int | None:
        """Its pid 1's (a root server's): opened, then checked still that process by its
        pid fd (a pid reused meanwhile would be another process's namespace)."""
        if self._pid1 is None or os.geteuid() != 0:
            return None
        try:
            netns = os.open(f"/proc/{self._pid1_number}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        if not self.alive:
            os.close(netns)
            return None
        return netns

    def watch_raw_sockets(self, take: RawSocketWatch) -> bool:
        if not self.confined:  # (the filter is confine's to load)
            return False
        self.raw_sockets = take
        return True

    async def stop(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._stopped:
                return
            self._stopped = True
            for process in list(self._running):
                await process.kill()
            if self._leaves is not None:
                await self._leaves.kill_leaves()
            await self._runtime.remove(self.container_id)
            if self._pid1 is not None:
                os.close(self._pid1)
                self._pid1 = None


class DockerRuntime:
    """Starts sandboxes as containers on the Docker engine at ``docker_host``."""

    name = "docker"

    def __init__(self, *, docker_host: str, server_label: str, state_dir: Path) -> None:
        self.docker_host = docker_host or os.environ.get("DOCKER_HOST", "")
        self.docker_host = self.docker_host or "unix:///var/run/docker.sock"
        self._server_label = server_label
        self._api: Any = None
        self._limiter = anyio.CapacityLimiter(8)
        self._bin_dir = state_dir / "docker-bin"
        self._confine: Path | None = None
        self._confine_known = False
        self._confine_lock = anyio.Lock()

    # -- the engine -------------------------------------------------------------------------

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``APIClient.<method>(*args, **kwargs)`` in a worker thread."""
        api = await self._client()
        return await anyio.to_thread.run_sync(
            functools.partial(getattr(api, method), *args, **kwargs), limiter=self._limiter
        )

    async def _client(self) -> Any:
        if self._api is None:
            docker = _docker()
            self._api = await anyio.to_thread.run_sync(
                functools.partial(
                    docker.APIClient,
                    base_url=self.docker_host,
                    version=DOCKER_API_VERSION,
                    timeout=60,
                )
            )
        return self._api

    def close(self) -> None:
        """Close the engine client's connections."""
        api, self._api = self._api, None
        if api is not None:
            api.close()

    def limits_problem(self) -> str | None:
        return None  # the engine enforces them

    async def problem(self, image: str, resources: ResourceLimits) -> str | None:
        """Why a sandbox of ``image`` cannot run here: no engine, or no such image."""
        return await self.check() or await self.check_image(image)

    async def check(self) -> str | None:
        """Why no sandbox can run on Docker here (a sentence), or None when one can."""
        reason = await anyio.to_thread.run_sync(unix_socket_problem, self.docker_host)
        if reason is None:
            try:
                await self.call("ping")
            except Exception as exc:
                self.close()  # (a new client next time, the engine may come back)
                reason = _reason(exc)
        if reason is None:
            return None
        return (
            f"the Docker runtime needs a Docker engine, and none answers at "
            f"{self.docker_host} ({reason}); start dockerd or set docker_host"
        )

    async def check_image(self, image: str) -> str | None:
        """Why ``image`` cannot be used (never pulled), or None when it is there."""
        docker = _docker()
        try:
            await self.call("inspect_image", image)
        except docker.errors.ImageNotFound:
            return (
                f"image {image!r} is not on the Docker engine at {self.docker_host}; "
                "build or load it there first (AgentFense never pulls images)"
            )
        except docker.errors.DockerException as exc:
            return f"cannot inspect image {image!r}: {_reason(exc)}"
        return None

    async def confine_helper(self) -> Path | None:
        """The confine helper bound into every container (see ``_confine``), built at the
        first start; None, and one warning, where it cannot be built: then commands run
        unconfined, and a process one leaves running can look into later ones."""
        async with self._confine_lock:
            if not self._confine_known:
                try:
                    self._confine = await anyio.to_thread.run_sync(build_confine, self._bin_dir)
                except ConfineUnavailable as exc:
                    _log.warning(
                        "Docker sandboxes run their commands unconfined, not kept apart from "
                        "one another: %s; %s",
                        exc,
                        FIX,
                    )
                self._confine_known = True
        return self._confine

    async def copy_session_shell(self, container_id: str) -> tuple[str, bool]:
        """Copy the image's bash (else its sh) into the container's RUN_DIR, exec-only, as
        root: the copy's path, or the image's own program where it cannot be copied; and
        whether it was."""
        docker = _docker()
        try:
            created = await self.call(
                "exec_create",
                container_id,
                ["/bin/sh", "-c", _COPY_SHELL],
                stdout=True,
                stderr=True,
                user="0",
                workdir="/",
            )
            exec_id = created_id(created)
            output: str = (await self.call("exec_start", exec_id)).decode(errors="replace")
            found = ProcessState.decode(await self.call("exec_inspect", exec_id))
            for _ in range(500):  # the output ends a moment before docker records the exit
                if not found.running:
                    break
                await anyio.sleep(0.01)
                found = ProcessState.decode(await self.call("exec_inspect", exec_id))
        except docker.errors.DockerException as exc:
            raise RuntimeError_(f"cannot prepare the session's shell: {_reason(exc)}") from None
        name, _, program = output.partition("\n")[0].partition(" ")
        if name not in ("bash", "sh") or not program.startswith("/"):
            raise RuntimeError_(f"cannot prepare the session's shell: {output.strip()[:500]}")
        if found.exit_code == 0:
            return f"{RUN_DIR}/{name}", True
        _log.warning(
            "sessions of container %s get the image's own %s, which their processes can look "
            "into: cannot copy it (%s)",
            container_id[:12],
            program,
            output.strip(),
        )
        return program, False

    async def remove(self, container_id: str) -> None:
        docker = _docker()
        try:
            await self.call("remove_container", container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            _log.warning("cannot remove container %s: %s", container_id[:24], _reason(exc))

    async def remove_leftovers(self) -> None:
        """Remove containers a previous run of this server left (it was killed)."""
        try:
            found = await self.call(
                "containers", all=True, filters={"label": f"agentfense.server={self._server_label}"}
            )
        except Exception:
            return
        for container in found:
            await self.remove(container["Id"])

    # -- sandboxes --------------------------------------------------------------------------

    def prepare(
        self, sandbox_id: str, resources: ResourceLimits, task_group: anyio.abc.TaskGroup
    ) -> Prepared | None:
        return None  # (nothing of a container's start waits for less than its files)

    async def start(
        self,
        spec: SandboxSpec,
        task_group: anyio.abc.TaskGroup,
        prepared: Prepared | None = None,
    ) -> DockerSandbox:
        docker = _docker()
        problem = await self.check() or await self.check_image(spec.image)
        if problem is not None:
            raise RuntimeError_(problem)
        confine = await self.confine_helper()
        uid, gid = spec.host_uid, spec.host_gid
        limits = spec.resources
        sizes = tmpfs_sizes(limits.memory_bytes or 0, spec.tmpfs_bytes)
        nproc = spec.max_processes
        mounts = [
            docker.types.Mount(
                WORKSPACE,
                str(spec.read_only_source or spec.workspace),
                type="bind",
                read_only=spec.read_only_source is not None,
                propagation="rprivate",
            )
        ]
        if confine is not None:
            mounts.append(
                docker.types.Mount(IN_CONTAINER, str(confine), type="bind", read_only=True)
            )
        host_config = (await self._client()).create_host_config(
            mounts=mounts,
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges", security_opt()],
            tmpfs={
                "/tmp": f"rw,nosuid,nodev,mode=1777,size={sizes['/tmp']}",
                "/home": f"rw,nosuid,nodev,mode=755,uid={uid},gid={gid},size={sizes['/home']}",
                RUN_DIR: f"rw,exec,nosuid,nodev,mode=755,size={_RUN_DIR_BYTES}",
            },
            shm_size=sizes["/dev/shm"],
            ulimits=[docker.types.Ulimit(name="nproc", soft=nproc, hard=nproc)] if nproc else None,
            mem_limit=limits.memory_bytes or None,
            memswap_limit=limits.memory_bytes or None,
            cpu_quota=limits.cpu_quota or None,
            cpu_period=CPU_PERIOD_US if limits.cpu_quota else None,
            cpu_shares=limits.cpu_shares or None,
            pids_limit=limits.pids_limit or None,
        )
        name = f"agentfense-{spec.sandbox_id}"
        await self.remove(name)  # a leftover of a killed server, never a live sandbox
        try:
            created = await self.call(
                "create_container",
                spec.image,
                command=_KEEPALIVE,
                user=f"{uid}:{gid}",
                working_dir=WORKSPACE,
                environment={"HOME": "/home/sandbox"},
                labels={
                    "agentfense.sandbox": spec.sandbox_id,
                    "agentfense.server": self._server_label,
                },
                host_config=host_config,
                name=name,
                network_disabled=True,
            )
            container_id = created_id(created)
        except docker.errors.DockerException as exc:
            raise RuntimeError_(f"cannot create the container: {_reason(exc)}") from None
        try:
            pid1, cgroups = await self._started(container_id)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self.remove(container_id)
            if isinstance(exc, docker.errors.DockerException):
                raise RuntimeError_(f"cannot start the container: {_reason(exc)}") from None
            raise
        return DockerSandbox(
            self,
            container_id,
            pid1,
            cgroups,
            task_group,
            keep_home=spec.keep_home,
            confined=confine is not None,
        )

    async def _started(self, container_id: str) -> tuple[int, dict[str, Path]]:
        """Start the container; its pid 1 (on the host) and the cgroups it runs in."""
        await self.call("start", container_id)
        inspected = await self.call("inspect_container", container_id)
        state = ProcessState.decode(inspected.get("State"), "a container's inspect")
        if not state.running or not state.pid:
            raise RuntimeError_(f"the container stopped at once: {state.error or state}")
        pid1 = state.pid
        _lower_oom_score(pid1)
        return pid1, _cgroups_of(pid1)


def _lower_oom_score(pid: int) -> None:
    with contextlib.suppress(OSError):  # (not as root: it stays as it is)
        Path(f"/proc/{pid}/oom_score_adj").write_text(str(PID1_OOM_SCORE_ADJ))


def _cgroups_of(pid: int) -> dict[str, Path]:
    """The cgroup directories (by controller; "" for the unified hierarchy) of ``pid``."""
    found: dict[str, Path] = {}
    unified_root = find_cgroup2_root()
    mounts = _v1_mounts()
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _number, controllers, path = line.split(":", 2)
        if not controllers:
            if unified_root is not None:
                found[""] = unified_root / path.lstrip("/")
            continue
        for controller in controllers.split(","):
            if controller in mounts:
                found[controller] = mounts[controller] / path.lstrip("/")
    return found


def _v1_mounts() -> dict[str, Path]:
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, rest = right.partition(" ")
        if fstype == "cgroup":
            for option in rest.split(" ")[-1].split(","):
                mounts.setdefault(option, Path(left.split(" ")[4]))
    return mounts


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _reason(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip() or type(exc).__name__
