"""What ``SandboxLimits`` writes on each hierarchy, checked against a directory laid out like
one (this host binds every controller to cgroup v1; the integration tests enforce limits there
for real)."""

from __future__ import annotations

import os
from pathlib import Path

from agentfense.runtimes._limits import CPU_PERIOD_US, LimitCgroups, SandboxLimits, cpu_weight
from agentfense.types import ResourceLimits

LIMITS = ResourceLimits(memory_bytes=64 << 20, cpu_quota=25_000, cpu_shares=512, pids_limit=50)


def _read(path: Path) -> str:
    return path.read_text().strip()


def test_v2_limits_go_on_the_sandbox_cgroup_and_the_agent_joins_a_leaf(tmp_path: Path) -> None:
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "agentfense").mkdir()
    sandbox = tmp_path / "agentfense" / "sb_1"
    sandbox.mkdir()
    (sandbox / "memory.swap.max").write_text("max")
    (sandbox / "agent").mkdir()
    (sandbox / "agent" / "cgroup.procs").write_text("")
    limits = SandboxLimits(
        LimitCgroups(2, dict.fromkeys(("memory", "cpu", "pids"), tmp_path)), "sb_1", LIMITS
    )
    fds = limits.create()
    try:
        assert len(fds) == 1
        assert os.readlink(f"/proc/self/fd/{fds[0]}") == str(sandbox / "agent" / "cgroup.procs")
    finally:
        for fd in fds:
            os.close(fd)
    for parent in (tmp_path, tmp_path / "agentfense"):
        assert _read(parent / "cgroup.subtree_control") == "+memory +cpu +pids"
    assert _read(sandbox / "memory.max") == str(64 << 20)
    assert _read(sandbox / "memory.swap.max") == "0"
    assert _read(sandbox / "cpu.max") == f"25000 {CPU_PERIOD_US}"
    assert _read(sandbox / "cpu.weight") == str(cpu_weight(512))
    assert _read(sandbox / "pids.max") == "50"
    (sandbox / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    (sandbox / "pids.events").write_text("max 7\n")
    assert limits.events() == {"memory": 2, "pids": 7}


def test_cpu_shares_map_onto_weights_as_runc_does() -> None:
    assert cpu_weight(2) == 1
    assert cpu_weight(1024) == 39
    assert cpu_weight(262144) == 10000
