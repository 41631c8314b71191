"""Fan-out on task groups: many awaitables, commands, files or sandboxes at once.

Structured versions of the ``asyncio.gather`` patterns, written on anyio so that they behave
the same under trio and asyncio:

- results come back in input order;
- ``limit`` bounds how many run at once: an int, or an ``anyio.CapacityLimiter`` shared with
  other calls (``None``: all at once);
- by default the first failure cancels the rest and is raised as is, or as an
  ``ExceptionGroup`` when several failed before the cancellation took effect;
  ``return_exceptions=True`` lets every one run to its end and puts each exception in its place;
- cancelling the caller cancels everything and the cancellation propagates (failures that
  raced with it are not reported, as with ``asyncio.gather``);
- nothing runs on after the return, and an awaitable that was never started is closed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from functools import partial
from os import PathLike
from typing import Literal, TypeAlias, TypedDict, TypeVar, Unpack, overload

import anyio
import anyio.lowlevel

from .client.sandbox import AsyncSandbox
from .errors import InvalidConfigurationError
from .presets import RuleLike
from .types import CommitMode, ExecResult, ResourceLimits, RuntimeType, TLSConfig

__all__ = [
    "FromLocalOptions",
    "Limit",
    "SandboxSource",
    "gather",
    "map_concurrently",
    "open_forks",
    "open_sandboxes",
    "read_many",
    "read_many_bytes",
    "run_many",
]

log = logging.getLogger("agentfense")

T = TypeVar("T")
R = TypeVar("R")

Limit: TypeAlias = int | anyio.CapacityLimiter | None
"""How many run at once: a number, a limiter shared with other calls, or ``None`` (no bound)."""

SandboxSource: TypeAlias = str | PathLike[str] | Callable[[], Awaitable[AsyncSandbox]]
"""What ``open_sandboxes`` opens: a local project, or a function that makes a sandbox."""


class FromLocalOptions(TypedDict, total=False):
    """The options of ``AsyncSandbox.from_local`` (all but the path); its defaults apply."""

    preset: str | None
    permissions: Sequence[RuleLike] | None
    runtime: RuntimeType
    image: str | None
    resources: ResourceLimits | None
    endpoint: str | None
    secure: bool
    owner_id: str | None
    codebase_name: str | None
    ignore_patterns: list[str] | None
    labels: dict[str, str] | None
    auto_start: bool
    keep_home: bool
    api_key: str | None
    tls: TLSConfig | None
    commit: CommitMode | str
    network: Iterable[str] | str | None


# -- the core ---------------------------------------------------------------------------------


async def _fan_out(
    calls: Sequence[Callable[[], Awaitable[T]]],
    *,
    limit: Limit,
    return_exceptions: bool,
) -> list[T | Exception]:
    """Await each ``call()`` in a task group; see the module's docstring for the semantics.

    A worker takes the next call only when it has capacity and nothing is cancelled, so a call
    that is never made leaves nothing to clean up.
    """
    if isinstance(limit, anyio.CapacityLimiter):
        workers, limiter = len(calls), limit
    else:
        workers, limiter = min(_checked(limit), len(calls)), None
    pending = iter(enumerate(calls))
    results: dict[int, T | Exception] = {}
    errors: list[Exception] = []

    async with anyio.create_task_group() as tg:

        async def worker() -> None:
            while True:
                if limiter is not None:
                    await limiter.acquire()
                try:
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    if tg.cancel_scope.cancel_called:
                        return
                    index, call = next(pending, (-1, None))
                    if call is None:
                        return
                    try:
                        results[index] = await call()
                    except Exception as exc:
                        if return_exceptions:
                            results[index] = exc
                        else:
                            errors.append(exc)
                            tg.cancel_scope.cancel()
                            return
                finally:
                    if limiter is not None:
                        limiter.release()

        for _ in range(workers):
            tg.start_soon(worker)

    if errors:
        try:
            if len(errors) == 1:
                raise errors[0]
            raise ExceptionGroup(f"{len(errors)} of {len(calls)} concurrent calls failed", errors)
        finally:
            errors.clear()  # no reference cycle through the traceback
    return [results[index] for index in range(len(calls))]


def _checked(limit: int | None) -> int:
    if limit is None:
        return 2**63
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int or a CapacityLimiter, not {limit!r}")
    return limit


def _many(items: Iterable[T], name: str) -> list[T]:
    """``items`` as a list; a lone string (an iterable of characters) is refused."""
    if isinstance(items, str | bytes):
        raise TypeError(f"{name} must be an iterable of strings, not one string")
    return list(items)


def _discard(awaitable: Awaitable[object]) -> None:
    """Release an awaitable that will never be awaited: close a coroutine (no "never awaited"
    warning), cancel a future."""
    if isinstance(awaitable, Coroutine):
        awaitable.close()
        return
    cancel = getattr(awaitable, "cancel", None)
    if callable(cancel):
        cancel()


# -- awaitables and functions -----------------------------------------------------------------


@overload
async def gather(
    *awaitables: Awaitable[T], limit: Limit = None, return_exceptions: Literal[False] = False
) -> list[T]: ...
@overload
async def gather(
    *awaitables: Awaitable[T], limit: Limit = None, return_exceptions: Literal[True]
) -> list[T | Exception]: ...
@overload
async def gather(
    *awaitables: Awaitable[T], limit: Limit = None, return_exceptions: bool
) -> list[T | Exception]: ...
async def gather(
    *awaitables: Awaitable[T], limit: Limit = None, return_exceptions: bool = False
) -> list[T] | list[T | Exception]:
    """Await all ``awaitables`` concurrently (at most ``limit`` at a time); their results in
    order.

    The first failure cancels the others and is raised as is (an ``ExceptionGroup`` if several
    failed); with ``return_exceptions=True`` all run to their end and each exception takes its
    result's place. Awaitables never started are closed (coroutines) or cancelled (futures).
    """
    started = [False] * len(awaitables)

    def starter(index: int) -> Callable[[], Awaitable[T]]:
        def start() -> Awaitable[T]:
            started[index] = True
            return awaitables[index]

        return start

    try:
        return await _fan_out(
            [starter(index) for index in range(len(awaitables))],
            limit=limit,
            return_exceptions=return_exceptions,
        )
    finally:
        for awaitable, was_started in zip(awaitables, started, strict=True):
            if not was_started:
                _discard(awaitable)


@overload
async def map_concurrently(
    func: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    limit: Limit = None,
    return_exceptions: Literal[False] = False,
) -> list[R]: ...
@overload
async def map_concurrently(
    func: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    limit: Limit = None,
    return_exceptions: Literal[True],
) -> list[R | Exception]: ...
@overload
async def map_concurrently(
    func: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    limit: Limit = None,
    return_exceptions: bool,
) -> list[R | Exception]: ...
async def map_concurrently(
    func: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    *,
    limit: Limit = None,
    return_exceptions: bool = False,
) -> list[R] | list[R | Exception]:
    """``[await func(item) for item in items]``, concurrently (at most ``limit`` at a time).

    ``func(item)`` is called only when there is capacity for it (never after a failure has
    cancelled the rest); failures as in ``gather``.
    """
    return await _fan_out(
        [partial(func, item) for item in items],
        limit=limit,
        return_exceptions=return_exceptions,
    )


# -- one sandbox: many commands, many files ---------------------------------------------------


@overload
async def run_many(
    sandbox: AsyncSandbox,
    commands: Iterable[str],
    *,
    limit: Limit = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    raise_on_error: bool = False,
    return_exceptions: Literal[False] = False,
) -> list[ExecResult]: ...
@overload
async def run_many(
    sandbox: AsyncSandbox,
    commands: Iterable[str],
    *,
    limit: Limit = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    raise_on_error: bool = False,
    return_exceptions: Literal[True],
) -> list[ExecResult | Exception]: ...
@overload
async def run_many(
    sandbox: AsyncSandbox,
    commands: Iterable[str],
    *,
    limit: Limit = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    raise_on_error: bool = False,
    return_exceptions: bool,
) -> list[ExecResult | Exception]: ...
async def run_many(
    sandbox: AsyncSandbox,
    commands: Iterable[str],
    *,
    limit: Limit = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    raise_on_error: bool = False,
    return_exceptions: bool = False,
) -> list[ExecResult] | list[ExecResult | Exception]:
    """Run ``commands`` in one sandbox concurrently, each as ``sandbox.run`` would; their
    results in order.

    ``timeout`` is each command's own (a ``CommandTimeoutError`` is a failure). With
    ``raise_on_error`` a non-zero exit is a failure too (``CommandExecutionError``), and by
    default the first failure cancels the other commands, which the server then kills.
    """

    async def run(command: str) -> ExecResult:
        return await sandbox.run(
            command, timeout=timeout, env=env, workdir=workdir, raise_on_error=raise_on_error
        )

    return await map_concurrently(
        run, _many(commands, "commands"), limit=limit, return_exceptions=return_exceptions
    )


@overload
async def read_many(
    sandbox: AsyncSandbox,
    paths: Iterable[str],
    *,
    limit: Limit = 8,
    encoding: str = "utf-8",
    return_exceptions: Literal[False] = False,
) -> dict[str, str]: ...
@overload
async def read_many(
    sandbox: AsyncSandbox,
    paths: Iterable[str],
    *,
    limit: Limit = 8,
    encoding: str = "utf-8",
    return_exceptions: Literal[True],
) -> dict[str, str | Exception]: ...
@overload
async def read_many(
    sandbox: AsyncSandbox,
    paths: Iterable[str],
    *,
    limit: Limit = 8,
    encoding: str = "utf-8",
    return_exceptions: bool,
) -> dict[str, str | Exception]: ...
async def read_many(
    sandbox: AsyncSandbox,
    paths: Iterable[str],
    *,
    limit: Limit = 8,
    encoding: str = "utf-8",
    return_exceptions: bool = False,
) -> dict[str, str] | dict[str, str | Exception]:
    """Read files from one sandbox concurrently (through its view, as ``read_file`` does):
    ``{path: text}`` in the order of ``paths``, each path read once."""
    unique = list(dict.fromkeys(_many(paths, "paths")))

    async def read(path: str) -> str:
        return await sandbox.read_file(path, encoding)

    texts = await map_concurrently(read, unique, limit=limit, return_exceptions=return_exceptions)
    return dict(zip(unique, texts, strict=True))


@overload
async def read_many_bytes(
    sandbox: AsyncSandbox,
    paths: Iterable[str],
    *,
    limit: Limit = 8,
    return_exceptions: Literal[False] = False,
) -> dict[str, bytes]: ...
@overload
async def read_many_bytes(
    sandbox: AsyncSandbox,
    paths: Iterable[str],
    *,
    limit: Limit = 8,
    return_exceptions: Literal[True],
) -> dict[str, bytes | Exception]: ...
@overload
async def read_many_bytes(
    sandbox: AsyncSandbox,
    paths: Iterable[str],
    *,
    limit: Limit = 8,
    return_exceptions: bool,
) -> dict[str, bytes | Exception]: ...
async def read_many_bytes(
    sandbox: AsyncSandbox,
    paths: Iterable[str],
    *,
    limit: Limit = 8,
    return_exceptions: bool = False,
) -> dict[str, bytes] | dict[str, bytes | Exception]:
    """``read_many`` for bytes, as ``read_file_bytes`` reads them."""
    unique = list(dict.fromkeys(_many(paths, "paths")))
    datas = await map_concurrently(
        sandbox.read_file_bytes, unique, limit=limit, return_exceptions=return_exceptions
    )
    return dict(zip(unique, datas, strict=True))


# -- many sandboxes ---------------------------------------------------------------------------


@asynccontextmanager
async def open_sandboxes(
    sources: Iterable[SandboxSource],
    *,
    limit: Limit = None,
    **options: Unpack[FromLocalOptions],
) -> AsyncIterator[list[AsyncSandbox]]:
    """Open many sandboxes concurrently (at most ``limit`` being created at a time) and close
    them all on leaving the block: ``async with open_sandboxes(paths) as sandboxes``.

    A path is opened with ``AsyncSandbox.from_local(path, **options)``; a function (say
    ``lambda: AsyncSandbox.from_codebase(cb)``) is called for its sandbox. The sandboxes come in
    the order of ``sources``. Each is left as its own ``async with`` would leave it (from_local
    and from_codebase: destroyed). If one cannot be created, the others are cancelled, those
    already made are destroyed, and the failure is raised as ``gather`` raises it.
    """
    numbered = list(enumerate(_many(sources, "sources")))
    made: dict[int, AsyncSandbox] = {}

    async def make(entry: tuple[int, SandboxSource]) -> AsyncSandbox:
        index, source = entry
        if isinstance(source, str | PathLike):
            sandbox = await AsyncSandbox.from_local(source, **options)
        else:
            sandbox = await source()
        made[index] = sandbox
        return sandbox

    try:
        sandboxes = await map_concurrently(make, numbered, limit=limit)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _close_all(list(made.values()), limit=limit, quietly=True)
        raise
    try:
        yield sandboxes
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _close_all(sandboxes, limit=limit, quietly=True)
        raise
    with anyio.CancelScope(shield=True):
        await _close_all(sandboxes, limit=limit, quietly=False)


def open_forks(
    sandbox: AsyncSandbox, n: int, *, limit: Limit = None
) -> contextlib.AbstractAsyncContextManager[list[AsyncSandbox]]:
    """``n`` forks of ``sandbox`` (``sandbox.fork()``), made concurrently (at most ``limit``
    at a time) and destroyed on leaving the block, as ``open_sandboxes`` does: the way to
    try several things from one state and keep the best (``await best.commit()``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidConfigurationError(f"n must be a count of forks, not {n!r}")
    return open_sandboxes([sandbox.fork] * n, limit=limit)


async def _close_all(sandboxes: Sequence[AsyncSandbox], *, limit: Limit, quietly: bool) -> None:
    """Leave every sandbox (all of them, whatever fails). Failures are logged when an exception
    is already on its way (``quietly``), else raised as ``gather`` raises them."""

    async def close(sandbox: AsyncSandbox) -> None:
        await sandbox.__aexit__(None, None, None)

    outcomes = await map_concurrently(close, sandboxes, limit=limit, return_exceptions=True)
    failures = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    if quietly:
        for failure in failures:
            log.warning("cleanup failed: %s", failure)
    elif len(failures) == 1:
        raise failures[0]
    elif failures:
        raise ExceptionGroup(
            f"closing {len(failures)} of {len(sandboxes)} sandboxes failed", failures
        )
