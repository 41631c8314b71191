"""Issue 14's rows: what reviewing, checkpointing and forking a ``commit="manual"`` sandbox
cost, on a server of the group's own (this build's, on a unix socket); one backend (asyncio).

- ``fork()`` of a sandbox with 1,000 changed files (each fork destroyed after), against
  ``from_codebase`` of a new sandbox with nothing changed: the difference is the copy.
- ``checkpoint()`` and ``restore()`` of 10 and of 10,000 changed files (each checkpoint
  deleted after its restore).
- ``changes()`` and ``diff()`` of 1,000 changed files (each a 3-line file, one line changed).
- The latency of an event: from a write's record in the permission filesystem to the
  client's ``async for`` (``sandbox.events()``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from agentfense import AsyncSandbox, AsyncSandboxClient
from agentfense.testing import start_server_process

from ._common import INFORMATIVE, Samples, Sizes, attempt, error_rows, progress, row
from ._stats import Row, Target
from ._timing import interleaved

BACKEND = "asyncio"
FORK_TARGET = Target(max_p50=0.100)
CHECKPOINT_TARGET = Target(max_p50=0.020)
FORK = "fork(), 1,000 changed files"
CHECKPOINT_10 = "checkpoint(), 10 changed files"
CHECKPOINT_10K = "checkpoint(), 10,000 changed files"
RESTORE_10 = "restore(), 10 changed files"
RESTORE_10K = "restore(), 10,000 changed files"
CHANGES = "changes(), 1,000 changed files"
DIFF = "diff(), 1,000 changed files"
EVENT = "event latency, a write to its event"
NAMES = [FORK, CHECKPOINT_10, RESTORE_10, CHECKPOINT_10K, RESTORE_10K, CHANGES, DIFF, EVENT]


def _change(count: int, where: str) -> str:
    """A command that changes ``count`` files under ``where`` (made in the codebase first)."""
    return f"cd {where} && for i in $(seq {count}); do echo changed >> f$i; done"


async def _codebase(client: AsyncSandboxClient, files: dict[str, int]) -> str:
    """A codebase with ``files[d]`` 3-line files in each directory ``d``."""
    codebase = await client.create_codebase("review-bench", "bench")
    paths = [(f"{d}/f{i}", f"line one\nline two\nline {i}\n") for d, n in files.items()
             for i in range(1, n + 1)]  # fmt: skip
    limiter = anyio.CapacityLimiter(16)

    async def upload(path: str, content: str) -> None:
        async with limiter:
            await client.upload_file(codebase.id, path, content)

    async with anyio.create_task_group() as tg:
        for path, content in paths:
            tg.start_soon(upload, path, content)
    return codebase.id


async def _checkpoint_rows(
    sandbox: AsyncSandbox, count: int, sizes: Sizes, reference: list[float]
) -> list[Row]:
    checkpoint_name, restore_name = (
        (CHECKPOINT_10, RESTORE_10) if count == 10 else (CHECKPOINT_10K, RESTORE_10K)
    )
    rounds = sizes.idle * 2 if count == 10 else max(3, sizes.idle // 4)
    checkpoints: list[float] = []
    restores: list[float] = []

    async def measure() -> tuple[list[float], list[float]]:
        for _ in range(rounds):
            started = time.perf_counter()
            checkpoint = await sandbox.checkpoint()
            checkpoints.append(time.perf_counter() - started)
            started = time.perf_counter()
            await sandbox.restore(checkpoint)
            restores.append(time.perf_counter() - started)
            await sandbox.delete_checkpoint(checkpoint)
        return checkpoints, []

    result = await attempt(f"checkpoint and restore, {count} changed files", measure(), reference)
    target = CHECKPOINT_TARGET if count == 10 else INFORMATIVE
    rows = [row(checkpoint_name, BACKEND, result, "", target)]
    restored: Samples | Exception = result if isinstance(result, Exception) else (restores, [])
    rows.append(row(restore_name, BACKEND, restored, "", INFORMATIVE))
    return rows


def _timed(call: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
    async def step() -> None:
        await call()

    return step


async def _measure(endpoint: str, sizes: Sizes, reference: list[float]) -> list[Row]:
    rows: list[Row] = []
    async with AsyncSandboxClient(endpoint) as client:
        progress("uploading a codebase of 11,010 files for the review benchmarks")
        codebase_id = await _codebase(client, {"small": 10, "thousand": 1000, "big": 10_000})

        def manual() -> Awaitable[AsyncSandbox]:
            return AsyncSandbox.from_codebase(
                codebase_id, preset="development", endpoint=endpoint, commit="manual"
            )

        async with await manual() as sandbox:
            await sandbox.run(_change(1000, "thousand"), raise_on_error=True)

            async def fork_timed() -> float:
                started = time.perf_counter()
                child = await sandbox.fork()
                elapsed = time.perf_counter() - started
                await child.destroy()
                return elapsed

            async def fresh_timed() -> float:
                started = time.perf_counter()
                other = await manual()
                elapsed = time.perf_counter() - started
                await other.destroy()
                return elapsed

            n = max(4, sizes.idle)
            result = await attempt(
                "fork() of 1,000 changed files vs a new sandbox",
                interleaved(fork_timed, fresh_timed, n_ours=n, n_base=n, warmup=2, self_timed=True),
                reference,
            )
            rows.append(row(FORK, BACKEND, result, "from_codebase, nothing changed", FORK_TARGET))
            for name, call in ((CHANGES, sandbox.changes), (DIFF, sandbox.diff)):
                result = await attempt(
                    name,
                    interleaved(_timed(call), None, n_ours=n, n_base=0, warmup=1),
                    reference,
                )
                rows.append(row(name, BACKEND, result, "", INFORMATIVE))
        async with await manual() as sandbox:
            await sandbox.run(_change(10, "small"), raise_on_error=True)
            rows += await _checkpoint_rows(sandbox, 10, sizes, reference)
            result = await attempt(EVENT, _event_latency(sandbox, sizes.idle * 2), reference)
            rows.append(row(EVENT, BACKEND, result, "", INFORMATIVE))
        async with await manual() as sandbox:
            progress("changing 10,000 files in a sandbox")
            await sandbox.run(_change(10_000, "big"), raise_on_error=True, timeout=600)
            rows += await _checkpoint_rows(sandbox, 10_000, sizes, reference)
    return rows


async def _event_latency(sandbox: AsyncSandbox, count: int) -> Samples:
    """From the moment the permission filesystem records a write (the event's time, taken as
    it answers the write) to the moment the client has the event, over a watch (wall clock,
    one host)."""
    samples: list[float] = []
    async with sandbox.events() as events:
        for index in range(count):
            await sandbox.run(f"echo {index} > event{index}")
            async for event in events:
                if event.path == f"event{index}" and event.kind == "modified":
                    assert event.time is not None
                    samples.append(time.time() - event.time.timestamp())
                    break
    return samples, []


def review_suite(work: Path, sizes: Sizes, reference: list[float]) -> list[Row]:
    """Issue 14's rows, on a server of their own."""
    (work / "review").mkdir()
    progress("starting a server for the review benchmarks")
    server = start_server_process(work / "review")
    try:
        return anyio.run(_measure, server.endpoint, sizes, reference, backend=BACKEND)
    except Exception as exc:
        progress(f"review: {type(exc).__name__}: {exc}")
        return error_rows(NAMES, BACKEND, exc)
    finally:
        server.stop()
