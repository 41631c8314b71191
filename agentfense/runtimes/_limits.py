"""Resource limits of a bwrap sandbox, on the cgroup hierarchy the host has.

Found once at server start (:func:`find_limit_cgroups`): the unified hierarchy (cgroup v2)
when it offers the memory, cpu and pids controllers, else the legacy per-controller
hierarchies (cgroup v1, also on hybrid hosts whose v2 mount has no controllers). A sandbox
with limits gets ``agentfense/<sandbox>`` in each, holding every one of its processes: its
agent joins them as it starts (through ``cgroup.procs`` files the server opened), and every
command inherits them. On v2 the agent's own leaf is ``agent`` beside the commands' leaves.

Units follow Docker's: ``cpu_quota`` is microseconds of CPU per 100 ms period (50000 = half
a CPU), ``cpu_shares`` a relative weight (1024 by default).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..types import ResourceLimits

_PARENT = "agentfense"
_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True)
class LimitCgroups:
    """Where limits go: ``version`` 2 with the unified root, or 1 with a mount per controller."""

    version: int
    roots: dict[str, Path]  # controller -> mount point (v2: the same root for each)

    def describe(self) -> str:
        return f"cgroup v{self.version}"


def find_limit_cgroups(mountinfo: str | None = None) -> LimitCgroups | None:
    """The hierarchy that can hold memory, cpu and pids limits here, or None."""
    if os.geteuid() != 0:
        return None
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    v1: dict[str, Path] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, rest = right.partition(" ")
        mount = Path(left.split(" ")[4])
        if fstype == "cgroup2":
            try:
                offered = (mount / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if all(c in offered for c in _CONTROLLERS):
                return LimitCgroups(2, dict.fromkeys(_CONTROLLERS, mount))
        elif fstype == "cgroup":
            options = rest.split(" ")[-1].split(",")
            for controller in _CONTROLLERS:
                if controller in options:
                    v1.setdefault(controller, mount)
    if all(c in v1 for c in _CONTROLLERS):
        return LimitCgroups(1, v1)
    return None


def tmpfs_sizes(memory_bytes: int, default: int) -> dict[str, int]:
    """The size of each writable tmpfs of a sandbox: ``default`` for /tmp and /home (an
    eighth of it for /dev/shm); with a memory limit, which their pages count against, half of
    the limit at most in all (a quarter for /tmp, an eighth each for /home and /dev/shm), so
    that filling them gets the writer ENOSPC and leaves its processes room to run."""
    sizes = {"/tmp": default, "/home": default, "/dev/shm": max(default // 8, 1 << 20)}
    if memory_bytes:
        caps = {
            "/tmp": memory_bytes // 4,
            "/home": memory_bytes // 8,
            "/dev/shm": memory_bytes // 8,
        }
        sizes = {path: min(size, caps[path]) for path, size in sizes.items()}
    return sizes


def cpu_weight(shares: int) -> int:
    """cgroup v2's cpu.weight for Docker's (v1) cpu shares, as runc maps them."""
    return max(1, min(10000, 1 + ((max(shares, 2) - 2) * 9999) // 262142))


def _controllers(limits: ResourceLimits) -> list[str]:
    """The controllers ``limits`` need. No other: a cgroup of the cpu controller makes the
    sandbox one scheduling entity among the host's, where it competes with a weight of one
    process for the CPU of all of its own (twice as slow as without on a busy host)."""
    wanted = {
        "memory": bool(limits.memory_bytes),
        "cpu": bool(limits.cpu_quota or limits.cpu_shares),
        "pids": bool(limits.pids_limit),
    }
    return [controller for controller in _CONTROLLERS if wanted[controller]]


class SandboxLimits:
    """One sandbox's limit cgroups: create, join (fds for the agent), read OOM kills, remove.

    Only the controllers its limits need (on v2: memory and pids always, which cost nothing of
    the kind, and cpu when it has a CPU limit)."""

    def __init__(self, cgroups: LimitCgroups, sandbox_id: str, limits: ResourceLimits) -> None:
        self._cgroups = cgroups
        self._limits = limits
        self._wanted = _controllers(limits)
        roots = [cgroups.roots[controller] for controller in self._wanted or ["memory"]]
        self._dirs = sorted({root / _PARENT / sandbox_id for root in roots})
        self._memory = cgroups.roots["memory"] / _PARENT / sandbox_id

    def create(self) -> list[int]:
        """Make the cgroups, write the limits; write fds on the ``cgroup.procs`` to join."""
        if self._cgroups.version == 2:
            root = self._cgroups.roots["memory"]
            enabled = ["memory", "cpu", "pids"] if "cpu" in self._wanted else ["memory", "pids"]
            wanted = " ".join(f"+{c}" for c in enabled)
            (root / "cgroup.subtree_control").write_text(wanted)
            (root / _PARENT).mkdir(exist_ok=True)
            (root / _PARENT / "cgroup.subtree_control").write_text(wanted)
        for directory in self._dirs:
            directory.mkdir(parents=True, exist_ok=True)
        try:
            self._write_limits()
            return self._join_fds()
        except OSError:
            self.remove()
            raise

    def _write_limits(self) -> None:
        limits = self._limits
        v2 = self._cgroups.version == 2
        memory = self._memory
        cpu = self._cgroups.roots["cpu"] / _PARENT / memory.name
        pids = self._cgroups.roots["pids"] / _PARENT / memory.name
        if limits.memory_bytes:
            if v2:
                (memory / "memory.max").write_text(str(limits.memory_bytes))
                _write_if_present(memory / "memory.swap.max", "0")
            else:
                (memory / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
                _write_if_present(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        if limits.cpu_quota:
            if v2:
                (cpu / "cpu.max").write_text(f"{limits.cpu_quota} {CPU_PERIOD_US}")
            else:
                (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                (cpu / "cpu.cfs_quota_us").write_text(str(limits.cpu_quota))
        if limits.cpu_shares:
            if v2:
                (cpu / "cpu.weight").write_text(str(cpu_weight(limits.cpu_shares)))
            else:
                (cpu / "cpu.shares").write_text(str(limits.cpu_shares))
        if limits.pids_limit:
            (pids / "pids.max").write_text(str(limits.pids_limit))

    def _join_fds(self) -> list[int]:
        if self._cgroups.version == 2:
            leaf = self._memory / "agent"
            leaf.mkdir(exist_ok=True)
            targets = [leaf]
        else:
            targets = self._dirs
        fds: list[int] = []
        try:
            for target in targets:
                fds.append(os.open(target / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def events(self) -> dict[str, int]:
        """How often each limit has struck so far: ``memory`` (OOM kills), ``pids`` (forks
        refused)."""
        memory = "memory.events" if self._cgroups.version == 2 else "memory.oom_control"
        pids = self._cgroups.roots["pids"] / _PARENT / self._memory.name / "pids.events"
        return {
            "memory": _counter(self._memory / memory, "oom_kill"),
            "pids": _counter(pids, "max"),
        }

    def remove(self) -> bool:
        """Remove the cgroups; False while processes (exiting ones too) remain in them."""
        removed = True
        for directory in [self._memory / "agent", *self._dirs]:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed


def _write_if_present(path: Path, value: str) -> None:
    if path.exists():
        with contextlib.suppress(OSError):
            path.write_text(value)


def _counter(path: Path, key: str) -> int:
    """The number after ``key`` in a flat-keyed cgroup file (0 when absent)."""
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0
