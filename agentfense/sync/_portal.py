"""The one blocking portal (an asyncio loop in one daemon thread) that runs the sync API.

What ``anyio.from_thread.start_blocking_portal`` does, without its context manager: the
portal lives as long as the process, stops at exit without waiting forever, and a forked
child starts its own.
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
from typing import ParamSpec, TypeVar

import anyio
import sniffio
from anyio.from_thread import BlockingPortal

P = ParamSpec("P")
T = TypeVar("T")

THREAD_NAME = "agentfense-sync"
STOP_TIMEOUT = 5.0  # at interpreter exit, for what is left in the loop

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_thread: threading.Thread | None = None
_atexit_registered = False


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


def _serve(started: Future[BlockingPortal]) -> None:
    async def serve() -> None:
        async with BlockingPortal() as portal:
            started.set_result(portal)
            await portal.sleep_until_stopped()

    try:
        anyio.run(serve, backend="asyncio")
    except BaseException as exc:
        if not started.done():
            started.set_exception(exc)
        raise


def get_portal() -> BlockingPortal:
    """The process-wide portal, started on first use and stopped at interpreter exit."""
    global _portal, _thread, _atexit_registered
    with _lock:
        if _portal is None or _thread is None or not _thread.is_alive():
            started: Future[BlockingPortal] = Future()
            thread = threading.Thread(target=_serve, args=(started,), name=THREAD_NAME, daemon=True)
            thread.start()
            _portal, _thread = started.result(), thread
            if not _atexit_registered:
                atexit.register(_stop)
                _atexit_registered = True
        return _portal


def _stop() -> None:
    global _portal, _thread
    with _lock:
        portal, thread = _portal, _thread
        _portal = _thread = None
    if portal is None or thread is None:
        return
    with suppress(RuntimeError):  # already stopped
        portal.call(portal.stop, True)  # cancel what is left
    thread.join(STOP_TIMEOUT)


def _forget_in_child() -> None:
    """After fork: the portal thread is not in the child; the next call starts another."""
    global _lock, _portal, _thread
    _lock, _portal, _thread = threading.Lock(), None, None


os.register_at_fork(after_in_child=_forget_in_child)


def call(func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the async ``func(*args, **kwargs)`` in the portal and wait for its result."""
    check_not_async(2)
    future = get_portal().start_task_soon(functools.partial(func, *args, **kwargs))
    try:
        return future.result()
    except BaseException:
        future.cancel()  # interrupted (Ctrl-C): cancel the call in the loop as well
        raise
