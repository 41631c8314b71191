"""The launcher a bwrap sandbox with limits starts with (runtimes/_waiting_launcher.py,
launcher.c's ``wait``), on a real server as root: it waits in the sandbox's limit cgroups
for the first command and becomes that command's launcher; unused, it goes after
``WAIT_FOR``; whatever becomes of it, every command runs as it would without it."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandbox, AsyncSandboxClient
from agentfense.errors import InvalidConfigurationError, SandboxNotFoundError
from agentfense.runtimes._waiting_launcher import WAIT_FOR
from agentfense.server._grpc.convert import MAX_COMMAND_BYTES

pytestmark = pytest.mark.anyio
_PIDS = Path("/sys/fs/cgroup/pids/agentfense")


def _limit_cgroup(sandbox: AsyncSandbox) -> Path:
    """The sandbox's pids cgroup (every sandbox has a pids limit by default)."""
    (found,) = _limit_cgroups(f"{sandbox.id}.")
    return found


def _limit_cgroups(prefix: str) -> list[Path]:
    return list(_PIDS.glob(f"{prefix}*"))


def _members(cgroup: Path) -> list[int]:
    try:
        return [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _arguments(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def _waiting(cgroup: Path) -> list[int]:
    return [pid for pid in _members(cgroup) if _arguments(pid)[:2] == ["init", "wait"]]


async def _joined(cgroup: Path) -> int:
    """The launcher waiting in ``cgroup``, once it is in (its move takes a moment)."""
    for _ in range(50):
        found = _waiting(cgroup)
        if found:
            (pid,) = found
            return pid
        await anyio.sleep(0.01)
    raise AssertionError(f"no launcher waits in {cgroup}")


@pytest.fixture(autouse=True)
def _limits_on_cgroup_v1() -> None:
    if not _PIDS.parent.is_dir():
        pytest.skip("the waiting launcher is made on cgroup v1 hosts, and this one has none")


@pytest.fixture
async def started(endpoint: str, project: Path) -> AsyncIterator[AsyncSandbox]:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        yield sandbox


async def test_the_first_command_is_launched_by_the_launcher_waiting_in_its_limits(
    started: AsyncSandbox,
) -> None:
    cgroup = _limit_cgroup(started)
    waiting = await _joined(cgroup)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(started.run, "sleep 1")
        for _ in range(200):  # it became that command's `launcher run`, in place
            if _arguments(waiting)[:2] == ["init", "run"]:
                break
            await anyio.sleep(0.01)
        assert _arguments(waiting)[:2] == ["init", "run"]
        assert waiting in _members(cgroup)
    assert _waiting(cgroup) == []
    assert (await started.run("echo again")).stdout == "again\n"


async def test_unused_it_goes_and_commands_still_join_the_limits(started: AsyncSandbox) -> None:
    cgroup = _limit_cgroup(started)
    await _joined(cgroup)
    await anyio.sleep(WAIT_FOR + 0.5)
    assert _members(cgroup) == []  # an idle sandbox keeps no process
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(started.run, "sleep 0.5")
        for _ in range(100):
            if _members(cgroup):
                break
            await anyio.sleep(0.01)
        assert _members(cgroup) != []  # the command's launcher joined them by itself


async def test_it_passes_arguments_environment_stdin_and_errors_as_given(
    endpoint: str, project: Path
) -> None:
    environment = {f"V{i}": f"value {i} é" for i in range(200)}
    environment["EMPTY"] = ""
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        await _joined(_limit_cgroup(sandbox))
        result = await sandbox.exec(
            "printf '[%s]' '' 'a b' \"$V7\" \"$EMPTY\" \"$V199\"; cat; pwd",
            stdin="fed\n",
            env=environment,
            workdir="/workspace/src",
        )
        assert result.exit_code == 0
        assert result.stdout == "[][a b][value 7 é][][value 199 é]fed\n/workspace/src\n"
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        await _joined(_limit_cgroup(sandbox))
        with pytest.raises(InvalidConfigurationError, match="workdir"):
            await sandbox.exec("true", workdir="/no/such/dir")
        assert (await sandbox.run("echo next")).stdout == "next\n"


async def test_the_largest_command_the_wire_allows_fits_its_request(
    endpoint: str, project: Path
) -> None:
    command = 'printf %s "$BIG" | wc -c; sleep 0.5'
    # (32 KiB of command, env and workdir in all: convert.MAX_COMMAND_BYTES)
    big = "x" * (MAX_COMMAND_BYTES - len(command) - len("BIG=") - len("/workspace"))
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        waiting = await _joined(_limit_cgroup(sandbox))
        results = []

        async def first() -> None:
            results.append(await sandbox.exec(command, env={"BIG": big}, workdir="/workspace"))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            await anyio.sleep(0.3)
            assert _arguments(waiting)[:2] == ["init", "run"]  # (it took the request)
        assert results[0].stdout == f"{len(big)}\n"


async def test_a_killed_waiting_launcher_costs_the_first_command_nothing(
    started: AsyncSandbox,
) -> None:
    waiting = await _joined(_limit_cgroup(started))
    os.kill(waiting, signal.SIGKILL)
    for _ in range(100):
        if _arguments(waiting)[:2] != ["init", "wait"]:
            break
        await anyio.sleep(0.01)
    result = await started.run("echo ok")
    assert (result.exit_code, result.stdout) == (0, "ok\n")


async def test_a_sandbox_stopped_before_any_command_leaves_nothing(
    endpoint: str, project: Path
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        cgroup = _limit_cgroup(sandbox)
        waiting = await _joined(cgroup)
        await sandbox.stop()
        for _ in range(300):
            if not cgroup.exists():
                break
            await anyio.sleep(0.01)
        assert not cgroup.exists()
        assert _arguments(waiting)[:2] != ["init", "wait"]


async def test_a_sandbox_started_later_gets_one_too(client: AsyncSandboxClient) -> None:
    codebase = await client.create_codebase("started-later")
    try:
        info = await client.create_sandbox(codebase.id)
        assert _limit_cgroups(f"{info.id}.") == []  # (nothing begun for a start to come)
        await client.start_sandbox(info.id)
        (cgroup,) = _limit_cgroups(f"{info.id}.")
        waiting = await _joined(cgroup)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(client.exec, info.id, "sleep 0.5")
            await anyio.sleep(0.25)
            assert _arguments(waiting)[:2] == ["init", "run"]
        await client.destroy_sandbox(info.id)
    finally:
        await client.delete_codebase(codebase.id)


async def test_creates_cancelled_at_any_moment_leave_no_cgroup_and_no_launcher(
    client: AsyncSandboxClient,
) -> None:
    """CreateSandbox with ``start`` begins the start while it makes the view
    (``Runtime.prepare``): a create cut short anywhere lets all of it go."""
    codebase = await client.create_codebase("cut-short")
    before = {path.name for path in _limit_cgroups("sb_")}
    try:
        for _ in range(4):
            for attempt in range(30):
                with anyio.move_on_after(attempt * 0.001):
                    await client.create_sandbox(codebase.id, start=True)
            made = await client.list_sandboxes(codebase.id)
            assert len(made) < 30  # (some were cut short: 5 to 11 of 30 were made here)
            for info in made:
                with contextlib.suppress(SandboxNotFoundError):  # (one whose start was cut
                    await client.destroy_sandbox(info.id)  # short is destroyed by the server)
        left: list[str] = []
        for _ in range(int((WAIT_FOR + 5) / 0.05)):
            left = sorted({path.name for path in _limit_cgroups("sb_")} - before)
            if not left:
                break
            await anyio.sleep(0.05)
        assert left == []
    finally:
        await client.delete_codebase(codebase.id)
