"""Held namespace sets built ahead, so that a bwrap sandbox's start need not wait for bwrap.

A set is a held sandbox (``_held``) with an empty ``/workspace`` and its tmpfs still root's:
the start takes one, mounts the sandbox's files on ``/workspace`` and gives the tmpfs to its
uid (``launcher attach``: about a millisecond), and the pool builds another in the
background, once that sandbox's first command is done (a build's mounts take the kernel's
mount lock, which the command's launcher needs too: built at idle priority meanwhile, the
build would hold the command up). Sets differ only by their tmpfs sizes (a sandbox's memory
limit sizes them): the pool keeps sets of the sizes the last start asked for, and lets the
others go. Each set costs what an idle sandbox does (kernel memory for its namespaces and
mounts, four fds).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import anyio
import anyio.abc

from ._held import HeldNamespaces
from .base import RuntimeError_

_log = logging.getLogger(__name__)
Sizes = tuple[tuple[str, int], ...]
# The longest a build waits for what it was told to wait for (a start's first command).
AFTER_AT_MOST = 0.5
Build = Callable[[Mapping[str, int], anyio.abc.TaskGroup], Awaitable[HeldNamespaces]]


class HeldPool:
    """Up to ``size`` ready sets of the last sizes asked for."""

    def __init__(self, build: Build, size: int = 2) -> None:
        self._build = build
        self._size = size
        self._sizes: Sizes = ()
        self._ready: list[HeldNamespaces] = []
        self._filling = False
        self._closed = False

    def take(self, sizes: Mapping[str, int]) -> HeldNamespaces | None:
        """A ready set of these sizes, or None."""
        if _key(sizes) != self._sizes or not self._ready:
            return None
        return self._ready.pop()

    def want(
        self,
        sizes: Mapping[str, int],
        task_group: anyio.abc.TaskGroup,
        *,
        after: anyio.Event | None = None,
    ) -> None:
        """Keep sets of these sizes ready from now on (built in ``task_group``), starting
        once ``after`` is set (at most ``AFTER_AT_MOST`` seconds later)."""
        if self._closed or self._size == 0:
            return
        key = _key(sizes)
        if key != self._sizes:
            self._sizes = key
            self._drop()
        if not self._filling and len(self._ready) < self._size:
            self._filling = True
            task_group.start_soon(self._fill, task_group, after)

    async def _fill(self, task_group: anyio.abc.TaskGroup, after: anyio.Event | None) -> None:
        try:
            if after is not None:
                with anyio.move_on_after(AFTER_AT_MOST):
                    await after.wait()
            while not self._closed and len(self._ready) < self._size:
                key = self._sizes
                try:
                    built = await self._build(dict(key), task_group)
                except RuntimeError_ as exc:
                    _log.warning("cannot build a sandbox ahead (starts build their own): %s", exc)
                    return
                if self._closed or key != self._sizes:
                    built.close()
                    continue
                self._ready.append(built)
        finally:
            self._filling = False

    def _drop(self) -> None:
        ready, self._ready = self._ready, []
        for namespaces in ready:
            namespaces.close()

    def close(self) -> None:
        """Let every ready set go (the server stops)."""
        self._closed = True
        self._drop()


def _key(sizes: Mapping[str, int]) -> Sizes:
    return tuple(sorted(sizes.items()))
