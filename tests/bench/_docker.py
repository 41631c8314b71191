"""The Docker runtime (group ``docker``): against the Docker Engine API called directly, and
against bwrap on the same commands.

Ours is the SDK against the suite's server, sandboxes of runtime ``docker`` on ``IMAGE``. The raw
side does the same work with the ``docker`` library's ``APIClient`` against the same engine
(``$DOCKER_HOST``, else the default socket; the server is given it as its ``docker_host``): a
container with the options ours gets (no network, every capability dropped, no-new-privileges,
an init, a bind-mounted workspace, fresh ``/tmp`` and ``$HOME``, the same keepalive command and
uid) created and started; ``exec_create`` + ``exec_start`` + ``exec_inspect`` of ``sh -c true``;
``remove_container(force=True)``. Its calls block, right on the event loop, as the other
baselines do (nothing else runs on it meanwhile). bwrap against Docker runs the same command with
``run`` in a sandbox of each runtime on one codebase. Without an engine or the image, the rows
say so (n/a) instead of failing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import docker

from agentfense import AsyncSandbox, AsyncSandboxClient, RuntimeType, get_preset
from agentfense.runtimes.base import WORKSPACE
from agentfense.runtimes.docker import _KEEPALIVE as KEEPALIVE
from agentfense.server.config import ServerConfig

from ._common import INFORMATIVE, Samples, Sizes, attempt, progress, row
from ._ours import PRESET, open_sandbox, run_true
from ._stats import Row
from ._timing import Step, _share, interleaved

IMAGE = "agentfense/busybox:latest"
DEFAULT_HOST = "unix:///var/run/docker.sock"  # what the server uses without DOCKER_HOST
LABEL = "agentfense.bench"  # on the raw side's containers, valued with this process's pid
LOOP = "for i in $(seq 100); do /bin/true; done"  # 100 processes started in the sandbox
BACKENDS = ("asyncio", "trio")
# Rows: a key, then the row's name and its baseline's.
ROWS = {
    "start": ("docker create+start", "raw API create+start"),
    "exec": ('docker run("true")', "raw API exec true"),
    "destroy": ("docker destroy", "raw API remove(force)"),
    "true": ('run("true"): docker vs bwrap', "bwrap sandbox"),
    "loop": ("run(100 x /bin/true): docker vs bwrap", "bwrap sandbox"),
}

Phases = tuple[float, float]  # seconds of create+start, then of destroy
PhasedStep = Callable[[], Awaitable[Phases]]


def engine_host() -> str:
    """The engine both sides use: ``$DOCKER_HOST``, else the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def sandbox_uid() -> int:
    """The uid ours' containers run as (the server's ``sandbox_uid`` when it runs as root)."""
    return ServerConfig().sandbox_uid if os.geteuid() == 0 else os.geteuid()


def open_engine(host: str) -> tuple[docker.APIClient | None, str]:
    """A client of the engine at ``host`` that has ``IMAGE``, or None and why not."""
    try:
        api = docker.APIClient(base_url=host, version="auto", timeout=60)
    except Exception as exc:  # a dead socket, a refused connection, a malformed address
        progress(f"docker: no engine at {host}: {exc}")
        return None, f"no Docker engine at {host}"
    try:
        found = api.images(name=IMAGE, quiet=True)
    except Exception as exc:
        progress(f"docker: cannot list the images at {host}: {exc}")
        found = []
    if not found:
        progress(f"docker: no image {IMAGE} at {host} (build it: scripts/docker-images.sh)")
        api.close()
        return None, f"no image {IMAGE} at {host}"
    return api, ""


class RawEngine:
    """The Engine API called directly: containers like ours on a plain directory."""

    def __init__(self, api: docker.APIClient, workspace: Path) -> None:
        self.api = api
        self.workspace = workspace
        self.uid = sandbox_uid()
        self.label = str(os.getpid())

    def create_started(self) -> str:
        """A new running container (ours' options, a bind mount of the workspace); its id."""
        uid = self.uid
        host_config = self.api.create_host_config(
            mounts=[
                docker.types.Mount(
                    WORKSPACE, str(self.workspace), type="bind", propagation="rprivate"
                )
            ],
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            tmpfs={
                "/tmp": "rw,nosuid,nodev,mode=1777",
                "/home/sandbox": f"rw,nosuid,nodev,mode=700,uid={uid},gid={uid}",
            },
        )
        created: dict[str, Any] = self.api.create_container(
            IMAGE,
            command=KEEPALIVE,
            user=f"{uid}:{uid}",
            working_dir=WORKSPACE,
            environment={"HOME": "/home/sandbox"},
            labels={LABEL: self.label},
            host_config=host_config,
            network_disabled=True,
        )
        container: str = created["Id"]
        try:
            self.api.start(container)
        except BaseException:
            self.remove(container)
            raise
        return container

    def exec_true(self, container: str) -> None:
        """``sh -c true`` in the container: create the exec, run it to its end, its exit code."""
        exec_id = self.api.exec_create(container, ["/bin/sh", "-c", "true"])["Id"]
        self.api.exec_start(exec_id)
        code = self.api.exec_inspect(exec_id)["ExitCode"]
        if code != 0:
            raise RuntimeError(f"raw docker exec of 'true' exited with {code}")

    def remove(self, container: str) -> None:
        self.api.remove_container(container, force=True, v=True)

    def remove_leftovers(self) -> None:
        """Remove every container of this run that is still there (after an error)."""
        for found in self.api.containers(all=True, filters={"label": f"{LABEL}={self.label}"}):
            self.remove(found["Id"])


# -- steps ------------------------------------------------------------------------------------


def run_command(sandbox: AsyncSandbox, command: str) -> Step:
    """One ``sandbox.run(command)`` round trip; the command must succeed."""

    async def step() -> None:
        result = await sandbox.run(command)
        if result.exit_code != 0:
            raise RuntimeError(f"{command!r} exited with {result.exit_code}: {result.stderr!r}")

    return step


def raw_exec(engine: RawEngine, container: str) -> Step:
    async def step() -> None:
        engine.exec_true(container)

    return step


def ours_cycle(client: AsyncSandboxClient, codebase_id: str) -> PhasedStep:
    """``create_sandbox`` (docker) + ``start_sandbox``, then ``destroy_sandbox``: each timed."""
    rules = get_preset(PRESET)

    async def step() -> Phases:
        started = time.perf_counter()
        info = await client.create_sandbox(
            codebase_id, permissions=rules, runtime=RuntimeType.DOCKER, image=IMAGE
        )
        try:
            await client.start_sandbox(info.id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await client.destroy_sandbox(info.id)
            raise
        running = time.perf_counter()
        await client.destroy_sandbox(info.id)
        return running - started, time.perf_counter() - running

    return step


def raw_cycle(engine: RawEngine) -> PhasedStep:
    """``create_container`` + ``start``, then ``remove_container(force=True)``: each timed."""

    async def step() -> Phases:
        started = time.perf_counter()
        container = engine.create_started()
        running = time.perf_counter()
        engine.remove(container)
        return running - started, time.perf_counter() - running

    return step


async def phased(
    ours: PhasedStep, base: PhasedStep, *, n: int, warmup: int, blocks: int = 5
) -> tuple[Samples, Samples]:
    """Two-phase steps interleaved in blocks (as ``interleaved``, no warm-up within a block):
    the samples of the first phase (ours, base), then of the second."""
    for _ in range(warmup):
        await ours()
        await base()
    ours_phases: list[Phases] = []
    base_phases: list[Phases] = []
    blocks = max(1, min(blocks, n))
    for index in range(blocks):
        count = _share(n, blocks, index)
        ours_phases += [await ours() for _ in range(count)]
        base_phases += [await base() for _ in range(count)]
    first = ([p[0] for p in ours_phases], [p[0] for p in base_phases])
    second = ([p[1] for p in ours_phases], [p[1] for p in base_phases])
    return first, second


# -- measurements -----------------------------------------------------------------------------


async def exec_vs_raw(sandbox: AsyncSandbox, engine: RawEngine, sizes: Sizes) -> Samples:
    """Ours' ``run("true")`` in a docker sandbox against a raw exec in a raw container."""
    container = engine.create_started()
    try:
        return await interleaved(
            run_true(sandbox),
            raw_exec(engine, container),
            n_ours=sizes.docker_exec,
            n_base=sizes.docker_exec,
            warmup=sizes.warmup,
        )
    finally:
        engine.remove(container)


async def _suite(
    backend: str, endpoint: str, engine: RawEngine, sizes: Sizes, reference: list[float]
) -> list[Row]:
    """Every docker measurement on the current async backend, as rows."""
    results: dict[str, Samples | Exception] = {}
    try:
        async with (
            await open_sandbox(endpoint, engine.workspace) as bwrap,
            await AsyncSandbox.from_codebase(
                bwrap.codebase_id,
                preset=PRESET,
                runtime=RuntimeType.DOCKER,
                image=IMAGE,
                endpoint=endpoint,
            ) as sandbox,
        ):
            results["exec"] = await attempt(
                f"{backend}: docker run('true') vs raw Engine API exec",
                exec_vs_raw(sandbox, engine, sizes),
                reference,
            )
            for key, command, n in (
                ("true", "true", sizes.docker_vs_bwrap),
                ("loop", LOOP, sizes.docker_loop),
            ):
                results[key] = await attempt(
                    f"{backend}: run({command!r}) in a docker vs a bwrap sandbox",
                    interleaved(
                        run_command(sandbox, command),
                        run_command(bwrap, command),
                        n_ours=n,
                        n_base=n,
                        warmup=sizes.warmup,
                    ),
                    reference,
                )
            cycles = await attempt(
                f"{backend}: docker create+start, destroy vs raw Engine API",
                phased(
                    ours_cycle(bwrap.client, bwrap.codebase_id),
                    raw_cycle(engine),
                    n=sizes.docker_lifecycle,
                    warmup=sizes.lifecycle_warmup,
                ),
                reference,
            )
            if isinstance(cycles, Exception):
                results["start"] = results["destroy"] = cycles
            else:
                results["start"], results["destroy"] = cycles
    except Exception as exc:
        progress(f"{backend}: docker sandboxes: {type(exc).__name__}: {exc}")
        results = dict.fromkeys(ROWS, exc)  # as the exec group: a failed sandbox fails its rows
    return [
        row(name, backend, results[key], base, INFORMATIVE) for key, (name, base) in ROWS.items()
    ]


def _unavailable_rows(problem: str) -> list[Row]:
    return [
        Row(name, backend, None, base_name=base, unavailable=problem)
        for name, base in ROWS.values()
        for backend in BACKENDS
    ]


def skipped_rows() -> list[Row]:
    """The group's rows as n/a when no engine (with the image) answers, else none: checked
    before the suite's server starts, so that it need not start for nothing."""
    api, problem = open_engine(engine_host())
    if api is None:
        return _unavailable_rows(problem)
    api.close()
    return []


def docker_suite(endpoint: str, work: Path, sizes: Sizes, reference: list[float]) -> list[Row]:
    """The group on each backend (n/a rows when no engine with the image answers)."""
    host = engine_host()
    progress(f"docker: the engine at {host}")
    api, problem = open_engine(host)
    if api is None:
        return _unavailable_rows(problem)
    engine = RawEngine(api, work / "project-small")
    rows: list[Row] = []
    try:
        for backend in BACKENDS:
            rows += anyio.run(_suite, backend, endpoint, engine, sizes, reference, backend=backend)
    finally:
        try:
            engine.remove_leftovers()
        finally:
            api.close()
    return rows
