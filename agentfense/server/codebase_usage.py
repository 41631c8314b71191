"""What each codebase holds (bytes of its regular files, their number, its entries): counted
by walking its tree once, then kept up to date by every upload and every sandbox's commit.

A walk costs the whole tree (seconds for a million entries), and ``GetCodebase`` and each
codebase of a ``ListCodebases`` page report sizes: walked on every call, a tenant calling
them at once on a large codebase held every worker thread of the server, and another
tenant's one-byte upload waited minutes. So a count is walked only when it is not known
(after the server's start, and the file count after a commit, which reports bytes and
entries but not files), each tenant walks one tree at a time, and walks run on threads of
their own (:data:`WALK_THREADS`), never on the worker threads every other call needs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from ._codebase_tree import _stats

WALK_THREADS = 4  # walks of every tenant at once (each tenant: one)


@dataclass(frozen=True, slots=True)
class Usage:
    size: int  # bytes of its regular files
    files: int | None  # how many regular files (None: not known since a commit)
    entries: int  # files, directories, links


class CodebaseUsage:
    """Each codebase's usage, and each tenant's in all (kept as they change, so that the
    quota check of each file of an upload costs the same however many codebases there
    are)."""

    def __init__(self) -> None:
        self._known: dict[str, Usage] = {}
        self._tenant: dict[str, str] = {}  # codebase id: its tenant
        self._unknown: dict[str, set[str]] = {}  # tenant: its codebases not counted yet
        self._held: dict[str, tuple[int, int]] = {}  # tenant: bytes, entries (as counted)
        self._changes: dict[str, int] = {}  # changes of each codebase since the start
        self._walking: dict[str, anyio.Lock] = {}  # tenant: held while it walks a tree
        self._threads = anyio.CapacityLimiter(WALK_THREADS)

    def track(self, codebase_id: str, tenant: str, usage: Usage | None) -> None:
        """A codebase of ``tenant``: new (``usage`` zero) or loaded (None: not counted)."""
        self._tenant[codebase_id] = tenant
        if usage is None:
            self._unknown.setdefault(tenant, set()).add(codebase_id)
        else:
            self._set(codebase_id, usage)

    def forget(self, codebase_id: str) -> None:
        """The codebase is gone."""
        tenant = self._tenant.pop(codebase_id, None)
        if tenant is not None:
            self._unknown.get(tenant, set()).discard(codebase_id)
            known = self._known.pop(codebase_id, None)
            if known is not None:
                self._add(tenant, -known.size, -known.entries)
        self._changes.pop(codebase_id, None)

    def changed(self, codebase_id: str, size: int, entries: int, files: int | None) -> None:
        """The tree grew by ``size`` bytes, ``entries`` entries and ``files`` regular files
        (None: an unknown number); negative when it shrank."""
        self._changes[codebase_id] = self._changes.get(codebase_id, 0) + 1
        known = self._known.get(codebase_id)
        if known is not None:
            self._set(
                codebase_id,
                Usage(
                    max(0, known.size + size),
                    None if files is None or known.files is None else max(0, known.files + files),
                    max(0, known.entries + entries),
                ),
            )

    def held(self, tenant: str) -> tuple[int, int]:
        """What the tenant's codebases hold in all, as counted: bytes, entries."""
        return self._held.get(tenant, (0, 0))

    def uncounted(self, tenant: str) -> list[str]:
        """The tenant's codebases not counted yet (since the server's start)."""
        return sorted(self._unknown.get(tenant, ()))

    def _set(self, codebase_id: str, usage: Usage) -> None:
        tenant = self._tenant.get(codebase_id)
        if tenant is None:  # (gone)
            return
        before = self._known.get(codebase_id, Usage(0, 0, 0))
        self._known[codebase_id] = usage
        self._unknown.get(tenant, set()).discard(codebase_id)
        self._add(tenant, usage.size - before.size, usage.entries - before.entries)

    def _add(self, tenant: str, size: int, entries: int) -> None:
        held = self._held.get(tenant, (0, 0))
        self._held[tenant] = (held[0] + size, held[1] + entries)

    async def count(self, codebase_id: str, tenant: str, files_dir: Path, *, files: bool) -> Usage:
        """What the codebase holds (its file count too, if ``files``): as known, else walked
        (and kept, unless the tree changed meanwhile or the codebase is gone)."""
        known = self._known.get(codebase_id)
        if known is not None and (known.files is not None or not files):
            return known
        async with self._walking.setdefault(tenant, anyio.Lock()):
            known = self._known.get(codebase_id)  # (counted while this call waited)
            if known is not None and (known.files is not None or not files):
                return known
            before = self._changes.get(codebase_id, 0)
            size, count, entries = await anyio.to_thread.run_sync(
                functools.partial(_stats, files_dir, codebase_id), limiter=self._threads
            )
        usage = Usage(size, count, entries)
        if self._changes.get(codebase_id, 0) == before:
            self._set(codebase_id, usage)
        return usage
