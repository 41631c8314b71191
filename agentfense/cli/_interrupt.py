"""Running the CLI's async work so that Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal
closed) cleans up, then exits.

The first signal cancels the innermost :meth:`Interrupts.cancellable` section: for ``run``
that is the sandbox's part, so the SDK's cleanup (destroying the sandbox, deleting the
codebase it uploaded) runs shielded to its end while an embedded server still answers it,
then that server stops. The exit code is 128 + the signal (130 for Ctrl-C). A second signal
during the cleanup leaves at once, and says what may be left behind.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable
from types import TracebackType

import anyio

from ._exits import signal_exit_code

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupts:
    """The signals received so far, and the sections the next one cancels."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._sections: list[anyio.CancelScope] = []

    @property
    def exit_code(self) -> int:
        return signal_exit_code(self.received[0]) if self.received else 0

    def cancellable(self) -> _Section:
        """A section the first signal cancels (the innermost one open at the time)."""
        return _Section(self, self._sections)

    def on_signal(self, signum: int) -> None:
        if self.received:
            print(
                "agentfense: interrupted again: leaving without cleaning up "
                "(`agentfense ls` shows what is left)",
                file=sys.stderr,
                flush=True,
            )
            os._exit(signal_exit_code(signum))
        self.received.append(signum)
        if self._sections:
            self._sections[-1].cancel()


class _Section:
    """A cancel scope the first signal cancels, known to its :class:`Interrupts` while open.

    A class rather than ``@contextmanager``: its ``__exit__`` is typed ``bool`` (it swallows
    the cancellation it caused), so for mypy too, code after a ``with`` block that returns
    runs when a signal cut the block short.
    """

    def __init__(self, interrupts: Interrupts, sections: list[anyio.CancelScope]) -> None:
        self._interrupts = interrupts
        self._sections = sections
        self._scope = anyio.CancelScope()

    def __enter__(self) -> None:
        self._scope.__enter__()
        self._sections.append(self._scope)
        if self._interrupts.received:
            self._scope.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self._sections.remove(self._scope)
        return self._scope.__exit__(exc_type, exc, traceback)


async def run_interruptible(work: Callable[[Interrupts], Awaitable[int]]) -> int:
    """``await work(interrupts)``, or 128 + the signal if one of ``HANDLED`` came first."""
    interrupts = Interrupts()
    outcome: list[int] = []
    failure: list[Exception] = []
    with anyio.open_signal_receiver(*HANDLED) as signals:
        async with anyio.create_task_group() as watchers:

            async def watch() -> None:
                async for signum in signals:
                    interrupts.on_signal(signum)

            watchers.start_soon(watch)
            with interrupts.cancellable():
                try:
                    outcome.append(await work(interrupts))
                except Exception as exc:  # raised again outside the task group, unwrapped
                    failure.append(exc)
            watchers.cancel_scope.cancel()
    if interrupts.received:
        return interrupts.exit_code
    if failure:
        raise failure[0]
    return outcome[0]
