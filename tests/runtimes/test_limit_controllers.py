"""Which cgroups a sandbox's limits put it in, on a directory laid out like cgroup v1 (each
controller its own hierarchy): only those its limits need."""

from __future__ import annotations

import os
from pathlib import Path

from agentfense.runtimes._limits import LimitCgroups, SandboxLimits
from agentfense.types import ResourceLimits


def _joined(tmp_path: Path, limits: ResourceLimits) -> list[str]:
    roots = {c: tmp_path / c for c in ("memory", "cpu", "pids")}
    for root in roots.values():
        (root / "agentfense" / "sb_1").mkdir(parents=True)
        (root / "agentfense" / "sb_1" / "cgroup.procs").write_text("")
    fds = SandboxLimits(LimitCgroups(1, roots), "sb_1", limits).create()
    try:
        return sorted(Path(os.readlink(f"/proc/self/fd/{fd}")).parts[-4] for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)


def test_a_pids_limit_alone_leaves_the_cpu_scheduling_alone(tmp_path: Path) -> None:
    # In a cpu cgroup, a sandbox's processes would share the weight of one host process.
    assert _joined(tmp_path, ResourceLimits(pids_limit=50)) == ["pids"]


def test_each_limit_brings_its_controller(tmp_path: Path) -> None:
    every = ResourceLimits(memory_bytes=64 << 20, cpu_shares=512, pids_limit=50)
    assert _joined(tmp_path, every) == ["cpu", "memory", "pids"]
