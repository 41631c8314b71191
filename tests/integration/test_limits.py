"""Resource limits on bwrap sandboxes: memory, CPU quota and shares, pids (real cgroups)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    CommandTimeoutError,
    InvalidConfigurationError,
    ResourceLimitExceededError,
    ResourceLimits,
)
from agentfense.runtimes._limits import cpu_weight, find_limit_cgroups

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
ALLOCATE = "python3 -c 'x = bytearray(400 * 1024 * 1024); print(len(x))'"
FORK_BOMB = "bomb() { bomb | bomb & }; bomb"
PID_HOG = (
    "python3 -c '\nimport os, time\nwhile True:\n    if os.fork() == 0:\n"
    "        time.sleep(300)\n        os._exit(0)'"
)
# Forks until refused, then waits with its children: a running command, holding every pid.
HOLD_EVERY_PID = (
    "python3 -c '\nimport os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n"
    "            time.sleep(30)\n            os._exit(0)\n    except OSError:\n        break\n"
    "time.sleep(30)'"
)
CPU_HOG = (
    "python3 -c '\nimport os, time\nend = time.monotonic() + 1.5\n"
    "while time.monotonic() < end: pass\nt = os.times()\nprint(t.user + t.system)'"
)


def _cgroup_dir(controller: str, sandbox_id: str) -> Path:
    """The sandbox's cgroup (of its running run: each has its own, ``<sandbox>.<run>``)."""
    cgroups = find_limit_cgroups()
    assert cgroups is not None, "this host offers no cgroups for limits"
    [found] = (cgroups.roots[controller] / "agentfense").glob(f"{sandbox_id}.*")
    return found


async def test_a_memory_bomb_is_killed_and_reported(endpoint: str, project: Path) -> None:
    limits = ResourceLimits(memory_bytes=64 * MiB)
    async with await AsyncSandbox.from_local(
        project, endpoint=endpoint, resources=limits
    ) as sandbox:
        result = await sandbox.run(ALLOCATE)
        assert result.exit_code == 137
        assert result.limit_exceeded == "memory"
        with pytest.raises(ResourceLimitExceededError) as raised:
            await sandbox.run(ALLOCATE, raise_on_error=True)
        assert raised.value.limit == "memory"
        assert raised.value.exit_code == 137
        assert raised.value.code == 8
        small = await sandbox.run("python3 -c 'x = bytearray(8 * 1024 * 1024); print(len(x))'")
        assert (small.stdout, small.limit_exceeded) == ("8388608\n", None)
        async with sandbox.session() as session:
            await session.exec("cd /tmp")
            in_session = await session.exec(ALLOCATE)
            assert (in_session.exit_code, in_session.limit_exceeded) == (137, "memory")
            assert (await session.exec("pwd")).stdout == "/tmp\n"  # the shell survived


async def test_a_fork_bomb_is_contained_and_the_sandbox_stays_usable(
    endpoint: str, project: Path
) -> None:
    limits = ResourceLimits(pids_limit=40)
    async with await AsyncSandbox.from_local(
        project, endpoint=endpoint, resources=limits
    ) as sandbox:
        with pytest.raises(CommandTimeoutError):  # in the foreground, until its timeout
            # (a builtin loop: a `sleep` after the bomb may find no pid left and end at once)
            await sandbox.run(f"{FORK_BOMB}; while :; do :; done", timeout=2)
        assert (await sandbox.run("echo usable")).stdout == "usable\n"
        # Left running in the background, processes hold every pid; the next command still
        # runs. (Sleepers, not a bomb: a bomb's pids come and go, and a spawn may slip in.)
        left = await sandbox.run(PID_HOG)
        assert left.limit_exceeded == "pids"
        assert (await sandbox.run("echo still usable")).stdout == "still usable\n"
        pids = _cgroup_dir("pids", sandbox.id)
        assert int((pids / "pids.current").read_text()) < 40


async def test_a_command_refused_for_want_of_pids_says_why_once(
    endpoint: str, project: Path
) -> None:
    """A running command holds every pid (nothing left over to kill): the next command is
    refused, with the sentence of what could not be made, not a prefix said twice."""
    limits = ResourceLimits(pids_limit=16)
    async with await AsyncSandbox.from_local(
        project, endpoint=endpoint, resources=limits
    ) as sandbox:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sandbox.run, HOLD_EVERY_PID)
            await anyio.sleep(1.5)
            with pytest.raises(ResourceLimitExceededError) as raised:
                await sandbox.run("echo refused")
            tg.cancel_scope.cancel()
        message = str(raised.value)
        assert "cannot start the command: cannot fork the command" in message, message
        assert message.count("cannot start the command") == 1, message
        assert "Resource temporarily unavailable" in message


async def test_cpu_quota_holds_a_hog_to_its_share(endpoint: str, project: Path) -> None:
    limits = ResourceLimits(cpu_quota=25_000)  # a quarter of a CPU
    async with await AsyncSandbox.from_local(
        project, endpoint=endpoint, resources=limits
    ) as sandbox:
        used = float((await sandbox.run(CPU_HOG)).stdout)
    # 1.5 s of wall time at a quarter of a CPU: about 0.375 s of CPU time.
    assert used < 0.25 * 1.5 * 1.4


async def test_cpu_shares_and_every_limit_land_in_the_sandbox_cgroups(
    endpoint: str, project: Path
) -> None:
    limits = ResourceLimits(memory_bytes=256 * MiB, cpu_quota=50_000, cpu_shares=512, pids_limit=99)
    cgroups = find_limit_cgroups()
    assert cgroups is not None
    async with await AsyncSandbox.from_local(
        project, endpoint=endpoint, resources=limits
    ) as sandbox:
        assert sandbox.info.resources == limits
        memory, cpu = _cgroup_dir("memory", sandbox.id), _cgroup_dir("cpu", sandbox.id)
        pids = _cgroup_dir("pids", sandbox.id)
        if cgroups.version == 2:
            assert (memory / "memory.max").read_text().strip() == str(256 * MiB)
            assert (cpu / "cpu.max").read_text().split() == ["50000", "100000"]
            assert (cpu / "cpu.weight").read_text().strip() == str(cpu_weight(512))
        else:
            assert (memory / "memory.limit_in_bytes").read_text().strip() == str(256 * MiB)
            assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
            assert (cpu / "cpu.shares").read_text().strip() == "512"
        assert (pids / "pids.max").read_text().strip() == "99"
        # Just started, the sandbox has no process but the launcher waiting for its first
        # command (tests/integration/test_waiting_launcher.py); then every process of it is
        # in them: the command's launcher (that one), its init, and what commands start.
        waiting = [int(pid) for pid in (pids / "cgroup.procs").read_text().split()]
        assert len(waiting) <= 1
        assert all(_arguments(pid)[:2] == [b"init", b"wait"] for pid in waiting)
        await sandbox.run("sleep 60 &")
        members = {int(pid) for pid in (pids / "cgroup.procs").read_text().split()}
        names = sorted(_program(pid) for pid in members)
        assert names == [b"init", b"init", b"sleep"]  # (the launcher's argv[0] is "init" too)
    for _ in range(250):  # (removed in the background, once the killed processes are gone)
        if not memory.exists() and not pids.exists():
            break
        await anyio.sleep(0.02)
    assert not memory.exists()
    assert not pids.exists()


def _program(pid: int) -> bytes:
    return _arguments(pid)[0]


def _arguments(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().split(b"\0")


async def test_bad_limits_are_refused_with_the_field_named(endpoint: str, project: Path) -> None:
    for limits, field in [
        (ResourceLimits(memory_bytes=1000), "memory_bytes"),
        (ResourceLimits(cpu_quota=10), "cpu_quota"),
        (ResourceLimits(pids_limit=1), "pids_limit"),
        (ResourceLimits(cpu_shares=10**6), "cpu_shares"),
    ]:
        with pytest.raises(InvalidConfigurationError, match=field):
            await AsyncSandbox.from_local(project, endpoint=endpoint, resources=limits)


def test_limit_cgroups_are_found_on_v1_v2_and_hybrid_hosts(tmp_path: Path) -> None:
    v2 = tmp_path / "unified"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    line = "41 31 0:38 / {mnt} rw,relatime - {fs} {fs} rw{opts}"
    only_v2 = line.format(mnt=v2, fs="cgroup2", opts="")
    found = find_limit_cgroups(only_v2)
    assert found is not None
    assert found.version == 2
    (v2 / "cgroup.controllers").write_text("")  # hybrid: v2 without controllers, v1 beside
    hybrid = "\n".join(
        [only_v2]
        + [line.format(mnt=f"/c/{c}", fs="cgroup", opts=f",{c}") for c in ("memory", "pids")]
        + [line.format(mnt="/c/cpu,cpuacct", fs="cgroup", opts=",cpu,cpuacct")]
    )
    found = find_limit_cgroups(hybrid)
    assert found is not None
    assert found.version == 1
    assert found.roots == {
        "memory": Path("/c/memory"),
        "cpu": Path("/c/cpu,cpuacct"),
        "pids": Path("/c/pids"),
    }
    assert find_limit_cgroups(only_v2) is None
