"""The SDK's one private asyncio event loop, in one daemon thread, and what runs on it.

Three things need an event loop of the SDK's own, and they share this one:

- trio callers: grpclib runs on asyncio only, so their channels live here (``_trio_calls``);
- cleanup under asyncio: a call made in a :func:`~agentfense._transport.finishing` block
  runs here, where no task of the caller's loop can cancel it (``_finishing``);
- the sync API: :func:`run_blocking` runs the async API in this loop, through an anyio
  blocking portal.

The loop is started on first use (``anyio.run`` on asyncio, serving the portal until it is
stopped), and a forked child starts its own on its first use (the parent's thread is not in
the child). At interpreter exit it is stopped: what still runs is cancelled and given
:data:`STOP_TIMEOUT` seconds, then the daemon thread is left to the interpreter's end, so the
exit never hangs.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import anyio
import sniffio
from anyio.from_thread import BlockingPortal

P = ParamSpec("P")
T = TypeVar("T")

THREAD_NAME = "agentfense-loop"
STOP_TIMEOUT = 5.0  # at interpreter exit, for what is left in the loop


@dataclass(frozen=True)
class _Running:
    loop: asyncio.AbstractEventLoop
    portal: BlockingPortal
    thread: threading.Thread


_lock = threading.Lock()
_running: _Running | None = None
_exiting = False  # set at interpreter exit: no new loop is started then


def _serve(started: Future[tuple[asyncio.AbstractEventLoop, BlockingPortal]]) -> None:
    async def serve() -> None:
        async with BlockingPortal() as portal:
            started.set_result((asyncio.get_running_loop(), portal))
            await portal.sleep_until_stopped()

    try:
        # When serve() returns, the runner cancels and awaits the tasks left on the loop
        # (trio callers' calls, cleanup calls), so none is destroyed while pending.
        anyio.run(serve, backend="asyncio")
    except BaseException as exc:
        if not started.done():
            started.set_exception(exc)
        raise


def _current() -> _Running:
    global _running
    with _lock:
        if _running is None or not _running.thread.is_alive():
            if _exiting:
                raise RuntimeError(
                    "agentfense's private event loop has stopped: the interpreter is exiting"
                )
            started: Future[tuple[asyncio.AbstractEventLoop, BlockingPortal]] = Future()
            thread = threading.Thread(target=_serve, args=(started,), name=THREAD_NAME, daemon=True)
            thread.start()
            loop, portal = started.result()
            _running = _Running(loop, portal, thread)
        return _running


def private_loop() -> asyncio.AbstractEventLoop:
    """The process-wide private loop (started on first use)."""
    return _current().loop


def is_private_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is the private loop now running (not a parent's, before a fork)."""
    running = _running
    return running is not None and running.loop is loop and running.thread.is_alive()


@atexit.register
def _stop() -> None:
    global _running, _exiting
    with _lock:
        running, _running = _running, None
        _exiting = True
    if running is None:
        return
    with suppress(RuntimeError):  # already stopped
        running.portal.start_task_soon(running.portal.stop, True)  # cancel what is left
    running.thread.join(STOP_TIMEOUT)


def _forget_in_child() -> None:
    """After fork: the loop's thread is not in the child; the next use starts another."""
    global _lock, _running, _exiting
    _lock, _running, _exiting = threading.Lock(), None, False


os.register_at_fork(after_in_child=_forget_in_child)


def _running_library() -> str | None:
    """The async library whose event loop runs in this thread, if any."""
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        pass
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "asyncio"


def check_not_async(depth: int = 1) -> None:
    """Refuse a blocking call from a thread that runs an event loop (it would block it);
    the error names the sync method ``depth`` frames up."""
    library = _running_library()
    if library is not None:
        name = sys._getframe(depth).f_code.co_qualname
        raise RuntimeError(
            f"{name}() is agentfense's blocking (sync) API and cannot be called inside a "
            f"running {library} event loop: it would block the loop. In async code use "
            "AsyncSandbox / AsyncSandboxClient with await (or run the sync call in a "
            "worker thread)."
        )


def run_blocking(func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the async ``func(*args, **kwargs)`` on the private loop and wait for its result
    (for the sync API: the error of a call from an event loop names the caller)."""
    check_not_async(2)
    future = _current().portal.start_task_soon(functools.partial(func, *args, **kwargs))
    try:
        return future.result()
    except BaseException:
        future.cancel()  # interrupted (Ctrl-C): cancel the call in the loop as well
        raise
