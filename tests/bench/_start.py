"""Issue 16's rows, today's design as the baseline its rebuild is judged by: how fast a
sandbox starts, the time to its first command, what it costs while idle, and ``run("true")``
against a raw bwrap spawn. On servers of the group's own (this build's, on unix sockets, with
no sandbox quota); one backend (asyncio).

- ``StartSandbox``: the RPC alone, on a sandbox just created (``agent-safe``, its view served
  by the permission filesystem), destroyed after; against a raw ``bwrap ... true``.
- The first command: ``AsyncSandbox.from_codebase`` (a connection, create, start) and
  ``run("echo ok")`` on an uploaded 100-file codebase, as a user does it; against a raw
  ``bwrap ... sh -c 'echo ok'``. Sequential (each destroyed after, interleaved with the raw
  side), staggered (launched 10 ms apart) and in a burst (all at once): each of those kept
  until the last has answered, then destroyed; each timed from its own launch.
- Idle memory at two counts, each on a dedicated server (``_idle.py``).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from agentfense import AsyncSandbox, AsyncSandboxClient, get_preset
from agentfense.testing import ServerProcess, start_server_process

from . import _idle
from ._baselines import raw_bwrap, raw_bwrap_argv
from ._common import Sizes, attempt, error_rows, kib, mib, progress, row
from ._ours import open_sandbox, run_true
from ._stats import MIB, Row, Summary, Target
from ._timing import interleaved

BACKEND = "asyncio"
PRESET = "agent-safe"
STAGGER = 0.010  # seconds between two launches of the staggered run
DESTROY_CONCURRENCY = 8
# The default quota is 1,000 sandboxes a tenant: the 1,000 idle ones and the warm-up's would
# not fit.
SETTINGS = {"quota_sandboxes": "0"}

START_TARGET = Target(max_p50=0.010)
FIRST_TARGET = Target(max_p50=0.020)
NO_ERRORS = Target(no_errors=True)
EXEC_TARGET = Target(max_ratio=0.6)
IDLE_TARGET = Target(max_p50=2**20)

START = "StartSandbox RPC"
FIRST = "create+start+run(echo ok)"
RUN = 'run("true") (issue 16)'
RAW_TRUE = "raw bwrap true"
RAW_ECHO = "raw bwrap echo ok"

Timed = Callable[[], Awaitable[float]]


@dataclass
class Firsts:
    """Times to the first command (seconds), ours and the raw side's, and ours that failed."""

    ours: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)


def _files_of(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())


async def upload(endpoint: str, project: Path) -> str:
    """A new codebase holding ``project``'s files; its id."""
    async with AsyncSandboxClient(endpoint) as client:
        codebase = await client.create_codebase("bench-start")
        for rel in await anyio.to_thread.run_sync(_files_of, project):
            await client.upload_local_file(codebase.id, rel, project / rel)
    return codebase.id


def _raw(argv: list[str], expected: bytes) -> Timed:
    """One raw bwrap spawn, on the event loop's own subprocess support; its seconds."""

    async def step() -> float:
        started = time.perf_counter()
        done = await anyio.run_process(argv, stdin=subprocess.DEVNULL, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0 or done.stdout != expected:
            raise RuntimeError(f"raw bwrap exited with {done.returncode}: {done.stderr[-500:]!r}")
        return elapsed

    return step


def _start_step(client: AsyncSandboxClient, codebase_id: str) -> Timed:
    """Create a sandbox, time its ``StartSandbox``, destroy it."""
    rules = get_preset(PRESET)

    async def step() -> float:
        info = await client.create_sandbox(codebase_id, permissions=rules)
        try:
            started = time.perf_counter()
            await client.start_sandbox(info.id)
            return time.perf_counter() - started
        finally:
            await client.destroy_sandbox(info.id)

    return step


async def _first(endpoint: str, codebase_id: str, kept: list[AsyncSandbox]) -> float:
    """``from_codebase`` + ``run("echo ok")``: its seconds; the sandbox goes into ``kept``."""
    started = time.perf_counter()
    sandbox = await AsyncSandbox.from_codebase(codebase_id, preset=PRESET, endpoint=endpoint)
    kept.append(sandbox)
    result = await sandbox.run("echo ok")
    elapsed = time.perf_counter() - started
    if (result.exit_code, result.stdout) != (0, "ok\n"):
        raise RuntimeError(f"'echo ok' exited with {result.exit_code}: {result.stderr!r}")
    return elapsed


async def _destroy(kept: list[AsyncSandbox]) -> None:
    """Destroy every sandbox of ``kept`` (a few at once, shielded); raise the first failure."""
    errors: list[Exception] = []

    async def destroyer() -> None:
        while kept:
            try:
                await kept.pop().destroy()
            except Exception as exc:
                errors.append(exc)

    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            for _ in range(DESTROY_CONCURRENCY):
                tg.start_soon(destroyer)
    if errors:
        raise errors[0]


def _sequential_step(endpoint: str, codebase_id: str) -> Timed:
    async def step() -> float:
        kept: list[AsyncSandbox] = []
        try:
            return await _first(endpoint, codebase_id, kept)
        finally:
            await _destroy(kept)

    return step


async def fleet(step: Callable[[], Awaitable[object]], n: int, gap: float) -> Firsts:
    """``n`` calls of ``step`` launched ``gap`` seconds apart (0: all at once), each timed
    from its launch to its end; the failures collected, not raised."""
    result = Firsts()

    async def one(launched: float) -> None:
        try:
            await step()
        except Exception as exc:
            result.errors.append(exc)
        else:
            result.ours.append(time.perf_counter() - launched)

    begin = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for index in range(n):
            if gap:
                await anyio.sleep_until(begin + index * gap)
            tg.start_soon(one, time.perf_counter())
    return result


async def sequential(endpoint: str, codebase_id: str, raw: Timed, n: int, warmup: int) -> Firsts:
    ours, base = await interleaved(
        _sequential_step(endpoint, codebase_id),
        raw,
        n_ours=n,
        n_base=n,
        warmup=warmup,
        block_warmup=0,
        self_timed=True,
    )
    return Firsts(ours, base)


async def at_once(endpoint: str, codebase_id: str, raw: Timed, n: int, gap: float) -> Firsts:
    """Ours ``n`` times ``gap`` apart (kept until the last answers), then the raw side so."""
    kept: list[AsyncSandbox] = []
    try:
        ours = await fleet(lambda: _first(endpoint, codebase_id, kept), n, gap)
    finally:
        await _destroy(kept)
    base = await fleet(raw, n, gap)
    if base.errors:
        raise base.errors[0]
    return Firsts(ours.ours, base.ours, ours.errors)


def _first_row(name: str, result: Firsts | Exception, target: Target) -> Row:
    if isinstance(result, Exception):
        return error_rows([name], BACKEND, result)[0]
    failed = len(result.errors)
    first = f"{type(result.errors[0]).__name__}: {result.errors[0]}" if failed else ""
    n = failed + len(result.ours)
    if len(result.ours) < 2:
        return Row(name, BACKEND, None, error=f"{failed} of {n} failed; the first: {first}")
    return Row(
        name,
        BACKEND,
        Summary.of(result.ours, tails=True),
        Summary.of(result.base),
        RAW_ECHO,
        target,
        failed=failed,
        note=f"{failed} of {n} failed; the first: {first}" if failed else "",
    )


async def _on_start_server(
    endpoint: str, work: Path, sizes: Sizes, reference: list[float]
) -> list[Row]:
    project = work / "project-100"
    codebase_id = await upload(endpoint, project)
    etc = work / "start-etc"
    true = _raw(raw_bwrap_argv(etc, project), b"")
    echo = _raw(raw_bwrap_argv(etc, project, ("/bin/sh", "-c", "echo ok")), b"ok\n")
    n = sizes.creations
    rows: list[Row] = []
    async with AsyncSandboxClient(endpoint) as client:
        start = await attempt(
            f"StartSandbox ({PRESET}) vs raw bwrap true, {n} each",
            interleaved(
                _start_step(client, codebase_id),
                true,
                n_ours=n,
                n_base=n,
                warmup=2,
                block_warmup=0,
                self_timed=True,
            ),
            reference,
        )
    rows.append(row(START, BACKEND, start, RAW_TRUE, START_TARGET))
    sequential_name, staggered_name, burst_name = _first_names(n)
    modes: list[tuple[str, Callable[[], Awaitable[Firsts]], Target]] = [
        (sequential_name, lambda: sequential(endpoint, codebase_id, echo, n, 2), FIRST_TARGET),
        (staggered_name, lambda: at_once(endpoint, codebase_id, echo, n, STAGGER), NO_ERRORS),
        (burst_name, lambda: at_once(endpoint, codebase_id, echo, n, 0.0), NO_ERRORS),
    ]
    for name, measure, target in modes:
        result = await attempt(f"{name} vs {RAW_ECHO}", measure(), reference)
        rows.append(_first_row(name, result, target))
    exec_result = await attempt(
        f"run('true') vs {RAW_TRUE}, issue 16's target",
        exec_vs_raw(endpoint, project, etc, sizes),
        reference,
    )
    rows.append(row(RUN, BACKEND, exec_result, RAW_TRUE, EXEC_TARGET))
    return rows


def _first_names(n: int) -> tuple[str, str, str]:
    return (
        f"{FIRST}, {n} sequential",
        f"{FIRST}, {n} staggered {STAGGER * 1000:g} ms apart",
        f"{FIRST}, burst of {n}",
    )


async def exec_vs_raw(
    endpoint: str, project: Path, etc: Path, sizes: Sizes
) -> tuple[list[float], list[float]]:
    """``run("true")`` in a read-only sandbox (the raw side's isolation) vs raw bwrap true."""
    async with await open_sandbox(endpoint, project) as sandbox:
        return await interleaved(
            run_true(sandbox),
            raw_bwrap(etc, project),
            n_ours=sizes.exec,
            n_base=sizes.raw_bwrap,
            warmup=sizes.warmup,
        )


@contextlib.contextmanager
def _own_server(work: Path, name: str) -> Iterator[ServerProcess]:
    """A server of this group's own; an error if it does not stop cleanly."""
    (work / name).mkdir()
    server = start_server_process(work / name, settings=SETTINGS)
    try:
        yield server
    finally:
        code = server.stop()
        if code != 0:
            raise RuntimeError(f"the server {name} exited with {code}: {server.log()[-2000:]}")


async def _idle_on(server: ServerProcess, project: Path, count: int) -> _idle.IdleResult:
    codebase_id = await upload(server.endpoint, project)
    return await _idle.idle_memory(server.process.pid, server.endpoint, codebase_id, count)


def _idle_row(count: int, result: _idle.IdleResult | Exception) -> Row:
    name = f"idle PSS per sandbox, {count} idle (whole server tree)"
    if isinstance(result, Exception):
        return error_rows([name], "-", result)[0]
    before, idle, after = result.before, result.idle, result.after
    return Row(
        name,
        "-",
        Summary.single(result.pss),
        target=IDLE_TARGET,
        unit=MIB,
        note=f"{result.processes:g} processes and {mib(result.rss)} RSS per sandbox; the "
        f"kernel's unreclaimable slab grew {kib(result.kernel)} per sandbox (namespaces, "
        f"mounts: in no PSS); the "
        f"host's MemAvailable fell {mib(result.host)} per sandbox (others' work included); "
        f"the server's tree: {mib(before.pss)} PSS in {before.processes} processes with no "
        f"sandbox, {mib(idle.pss)} with {count} idle, {mib(after.pss)} in {after.processes} "
        "after destroying them",
    )


def _idle_rows(work: Path, sizes: Sizes, reference: list[float]) -> list[Row]:
    rows: list[Row] = []
    estimate = _idle.GUESS
    for count in (sizes.idle_some, sizes.idle_many):
        result: _idle.IdleResult | Exception
        try:
            _idle.check_room(count, estimate)
            with _own_server(work, f"server-idle-{count}") as server:
                result = anyio.run(
                    attempt,
                    f"idle memory of {count} sandboxes, on a server of their own",
                    _idle_on(server, work / "project-100", count),
                    reference,
                    backend=BACKEND,
                )
        except RuntimeError as exc:  # (no room, or the server did not start or stop cleanly)
            progress(str(exc))
            result = exc
        if isinstance(result, _idle.IdleResult):
            estimate = max(int(result.host), int(result.pss))  # (the guard stays on)
        rows.append(_idle_row(count, result))
    return rows


def start_suite(work: Path, sizes: Sizes, reference: list[float]) -> list[Row]:
    """Every row of the group, each server started and stopped here."""
    names = [START, *_first_names(sizes.creations), RUN]
    try:
        with _own_server(work, "server-start") as server:
            measure = (server.endpoint, work, sizes, reference)
            rows = anyio.run(_on_start_server, *measure, backend=BACKEND)
    except Exception as exc:  # (the server, the upload or a sandbox for run("true") failed)
        progress(f"{type(exc).__name__}: {exc}")
        rows = error_rows(names, BACKEND, exc)
    return rows + _idle_rows(work, sizes, reference)
