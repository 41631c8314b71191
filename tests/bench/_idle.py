"""What idle sandboxes cost (issue 16): the proportional set size (PSS) of a server's whole
process tree (the server, its fs process, every sandbox process), with ``count`` sandboxes
idle, minus the same server with none, per sandbox.

Idle: created, started, one ``echo ok`` run in each (a design that keeps a process after the
first command pays for it here), nothing running, after a short settle. The host's own view
(MemAvailable) is taken too, and guards the machine: a run that would leave less than
``RESERVE`` available stops with an error instead (the machine is shared).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import anyio

from agentfense import AsyncSandboxClient, get_preset

SETTLE = 1.0  # seconds between the last start (or destroy) and a measurement
START_CONCURRENCY = 8  # sandboxes created and started (and destroyed) at once
RESERVE = 4 * 2**30  # bytes of MemAvailable left to the rest of the machine
GUESS = 16 * 2**20  # bytes of host memory per sandbox, when nothing measured says better
PRESET = "agent-safe"


class MemoryShortError(RuntimeError):
    """The machine has not the memory the measurement would take (nothing was measured)."""


@dataclass(frozen=True, slots=True)
class Tree:
    """A process tree's memory (bytes) and size, and the host's MemAvailable and unreclaimable
    kernel slab (SUnreclaim: where namespaces, mounts and tmpfs inodes live) at the time."""

    pss: int
    rss: int
    processes: int
    available: int
    kernel: int


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # (it just ended)
            with open(f"/proc/{name}/stat") as stat:
                ppid = int(stat.read().rpartition(")")[2].split()[1])
            tree.setdefault(ppid, []).append(int(name))
    return tree


def _tree(root: int) -> Iterator[int]:
    children = _children()
    pending = [root]
    while pending:
        pid = pending.pop()
        yield pid
        pending += children.get(pid, [])


def _kib(path: str, name: str) -> int | None:
    """A ``Name:  123 kB`` field of a /proc file in bytes; 0 when the process holds no memory
    (a zombie), None when it is gone. Any other failure is raised: a process that cannot be
    read would be counted as free."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return 0


def available() -> int:
    """The host's MemAvailable, in bytes."""
    found = _kib("/proc/meminfo", "MemAvailable")
    if not found:
        raise RuntimeError("/proc/meminfo has no MemAvailable")
    return found


def tree_memory(root: int) -> Tree:
    """Summed PSS and RSS of ``root`` and all its descendants (those that ended meanwhile
    left out)."""
    pss = rss = processes = 0
    for pid in _tree(root):
        found = _kib(f"/proc/{pid}/smaps_rollup", "Pss"), _kib(f"/proc/{pid}/status", "VmRSS")
        if found[0] is None or found[1] is None:
            continue
        pss, rss, processes = pss + found[0], rss + found[1], processes + 1
    if not processes:
        raise RuntimeError(f"process {root} is gone: no memory to measure")
    return Tree(pss, rss, processes, available(), _kib("/proc/meminfo", "SUnreclaim") or 0)


async def _settled(root: int) -> Tree:
    await anyio.sleep(SETTLE)
    return await anyio.to_thread.run_sync(tree_memory, root)


def check_room(count: int, per_sandbox: int) -> None:
    """Raise MemoryShortError unless ``count`` sandboxes of ``per_sandbox`` bytes (with half
    as much again to spare) leave RESERVE available."""
    need, free = count * per_sandbox * 3 // 2, available()
    if free - need < RESERVE:
        raise MemoryShortError(
            f"{count} idle sandboxes would take about {need / 2**30:.1f} GiB "
            f"({per_sandbox / 2**20:.1f} MiB each, with half again to spare) and "
            f"{free / 2**30:.1f} GiB is available, {RESERVE / 2**30:g} GiB of which is kept "
            "for the rest of this shared machine: not measured"
        )


@dataclass(frozen=True, slots=True)
class IdleResult:
    count: int
    before: Tree  # no sandbox (one created, run and destroyed first: one-off costs paid)
    idle: Tree  # ``count`` sandboxes idle
    after: Tree  # after destroying them

    @property
    def pss(self) -> float:
        """The tree's PSS per idle sandbox: the measure."""
        return (self.idle.pss - self.before.pss) / self.count

    @property
    def rss(self) -> float:
        return (self.idle.rss - self.before.rss) / self.count

    @property
    def processes(self) -> float:
        return (self.idle.processes - self.before.processes) / self.count

    @property
    def kernel(self) -> float:
        """How much the kernel's unreclaimable slab grew per sandbox (not in any PSS)."""
        return (self.idle.kernel - self.before.kernel) / self.count

    @property
    def host(self) -> float:
        """How much MemAvailable fell per sandbox (others' work on the machine included)."""
        return (self.before.available - self.idle.available) / self.count


async def idle_memory(root: int, endpoint: str, codebase_id: str, count: int) -> IdleResult:
    """The tree of the server ``root`` (at ``endpoint``) with none, then ``count`` idle
    ``agent-safe`` sandboxes on ``codebase_id``, then none again. Every sandbox is destroyed
    on the way out; one that fails to start or to be destroyed fails the measurement."""
    rules = get_preset(PRESET)
    ids: list[str] = []
    failures: list[Exception] = []
    async with AsyncSandboxClient(endpoint) as client:

        async def start() -> None:
            info = await client.create_sandbox(codebase_id, permissions=rules)
            ids.append(info.id)
            await client.start_sandbox(info.id)
            result = await client.exec(info.id, "echo ok")
            if (result.exit_code, result.stdout) != (0, "ok\n"):
                raise RuntimeError(f"'echo ok' gave {result.exit_code}: {result.stderr!r}")

        async def starter(remaining: list[int]) -> None:
            while remaining and not failures:
                remaining.pop()
                if available() < RESERVE:
                    raise MemoryShortError(
                        f"stopped after {len(ids)} of {count} sandboxes: "
                        f"{available() / 2**30:.1f} GiB of memory left available, below the "
                        f"{RESERVE / 2**30:g} GiB kept for the rest of this shared machine"
                    )
                await start()

        async def guarded(remaining: list[int]) -> None:
            try:
                await starter(remaining)
            except Exception as exc:
                failures.append(exc)

        async def destroyer(pending: list[str]) -> None:
            while pending:
                try:
                    await client.destroy_sandbox(pending.pop())
                except Exception as exc:
                    failures.append(exc)

        async def destroy_all() -> None:
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as tg:
                    for _ in range(START_CONCURRENCY):
                        tg.start_soon(destroyer, ids)

        try:
            await start()
        finally:
            await destroy_all()
        if failures:
            raise failures[0]
        before = await _settled(root)
        try:
            remaining = list(range(count))
            async with anyio.create_task_group() as tg:
                for _ in range(START_CONCURRENCY):
                    tg.start_soon(guarded, remaining)
            if failures:
                raise failures[0]
            idle = await _settled(root)
        finally:
            await destroy_all()
        if failures:
            raise failures[0]
        after = await _settled(root)
    return IdleResult(count, before, idle, after)
