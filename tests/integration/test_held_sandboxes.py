"""bwrap sandboxes held by the server's fds (runtimes/_held.py, launcher.c), on a real server
as root: no process while idle; each command in the commands' pid namespace (a new one, or
the running one joined); the init and the guards out of the sandbox's reach; nothing left
when the server is killed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandbox, AsyncSandboxClient
from agentfense.errors import SandboxNotRunningError
from agentfense.fs._device import mounted_views, unmount
from agentfense.testing import start_server_process

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sandbox(endpoint: str, project: Path) -> AsyncIterator[AsyncSandbox]:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as created:
        yield created


async def _host_uid(sandbox: AsyncSandbox) -> int:
    mapped = await sandbox.run("cat /proc/self/uid_map")
    inside, outside, count = mapped.stdout.split()
    assert (inside, count) == ("1000", "1")  # uid 1000, and nothing else of the host
    return int(outside)


def _processes_of(uid: int) -> list[int]:
    """The host's processes whose real uid is ``uid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if int(uids.split()[1]) == uid:
            found.append(int(name))
    return found


async def _none_left(uid: int) -> list[int]:
    for _ in range(250):
        left = _processes_of(uid)
        if not left:
            return left
        await anyio.sleep(0.02)
    return _processes_of(uid)


async def test_an_idle_sandbox_has_no_process(sandbox: AsyncSandbox) -> None:
    uid = await _host_uid(sandbox)
    assert (await sandbox.run("echo ok")).stdout == "ok\n"
    assert await _none_left(uid) == []
    # A background job keeps its init (and itself), and nothing more, until it ends.
    await sandbox.run("sleep 0.5 >/dev/null 2>&1 &")
    assert len(_processes_of(uid)) == 1  # the job (the init and the guard are root's)
    assert await _none_left(uid) == []
    assert (await sandbox.run("echo still")).stdout == "still\n"


async def test_commands_join_what_runs_and_outlive_what_they_joined(
    sandbox: AsyncSandbox,
) -> None:
    await sandbox.run("sleep 0.3 >/dev/null 2>&1 &")
    # This command joins the job's pid namespace; the job ends while it runs: the init stays
    # for it (it is no child of the init's), or the namespace would die with it.
    joined = await sandbox.run("ps -eo args= | grep -c '^sleep 0.3'; sleep 1; echo done")
    assert (joined.stdout, joined.exit_code) == ("1\ndone\n", 0)
    # A new namespace once nothing runs: pid 1 is an init of its own again.
    fresh = await sandbox.run("ps -eo pid=,args=")
    assert [line.split(None, 1) for line in fresh.stdout.splitlines()][:2] == [
        ["1", "init"],
        ["2", "guard"],
    ]


async def test_the_guard_and_the_init_are_out_of_reach(sandbox: AsyncSandbox) -> None:
    await sandbox.run("sleep 30 >/dev/null 2>&1 &")
    attempt = await sandbox.run(
        "guard=$PPID; kill -9 $guard; echo kill=$?; kill -STOP $guard; echo stop=$?; "
        "kill -9 1; kill -TERM 1; echo $(ps -o pid= -p 1,$guard | wc -l) alive; "
        "cat /proc/1/environ /proc/$guard/environ >/dev/null 2>&1; echo read=$?"
    )
    assert attempt.stdout.splitlines() == ["kill=1", "stop=1", "2 alive", "read=1"]
    assert attempt.exit_code == 0  # its own result, not a forged one
    assert (await sandbox.run("pgrep -xc sleep")).stdout == "1\n"


async def test_commands_make_no_user_namespace_and_hold_no_capability(
    sandbox: AsyncSandbox,
) -> None:
    checked = await sandbox.run(
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t' ' '; "
        "unshare -U true 2>&1; echo unshare=$?; "
        "python3 -c 'import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        "print(libc.unshare(0x10000000), ctypes.get_errno())'; "
        "cat /proc/self/cgroup | grep '^0::'; id"
    )
    assert checked.stdout.splitlines() == [
        "CapEff: 0000000000000000",
        "CapBnd: 0000000000000000",
        "NoNewPrivs: 1",
        "Seccomp: 2",
        "unshare: unshare failed: Operation not permitted",
        "unshare=1",
        "-1 1",  # (EPERM, by the seccomp filter)
        "0::/",  # a cgroup namespace rooted at its own leaf: nothing of the host's tree
        "uid=1000(sandbox) gid=1000(sandbox) groups=1000(sandbox)",
    ]


async def test_a_killed_server_leaves_no_process_of_its_sandboxes(tmp_path: Path) -> None:
    server = start_server_process(tmp_path / "state")  # (no `with`: it is to die unclean)
    try:
        async with AsyncSandboxClient(server.endpoint) as client:
            codebase = await client.create_codebase("killed")
            sandbox = await client.create_sandbox(codebase.id)
            await client.start_sandbox(sandbox.id)
            mapped = await client.exec(sandbox.id, "cat /proc/self/uid_map")
            uid = int(mapped.stdout.split()[1])
            await client.exec(sandbox.id, "sleep 300 >/dev/null 2>&1 &")  # a new init's
            await client.exec(sandbox.id, "sleep 301 >/dev/null 2>&1 &")  # joined
            session = await client.create_session(sandbox.id)  # a running command
            await client.session_exec(session.id, "echo ready")
            assert len(_processes_of(uid)) >= 3  # two jobs, the shell (the inits are root's)
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            start = time.monotonic()
            assert await _none_left(uid) == []
            assert time.monotonic() - start < 5
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        # What a successor on its state directory would sweep: the views it left mounted
        # (left on the host, every later bwrap start would copy them).
        for view in mounted_views(server.state_dir / "fs" / "views"):
            unmount(view)


async def test_without_the_launcher_a_sandbox_keeps_an_agent(
    tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")  # (the server cannot build its launcher)
    with start_server_process(tmp_path / "state") as server:
        async with await AsyncSandbox.from_local(project, endpoint=server.endpoint) as sandbox:
            done = await sandbox.run("id -u; ps -o args= -p 1")
            # pid 1: the agent, which stays while the sandbox is idle
            assert done.stdout.startswith("1000\n/usr/bin/python3 -I -S -c ")
            await sandbox.run("sleep 30 >/dev/null 2>&1 &")
            assert (await sandbox.run("pkill -x sleep && echo stopped")).stdout == "stopped\n"
        assert "each idle bwrap sandbox keeps two processes" in server.log()


async def test_commands_that_race_an_ending_init_all_run(sandbox: AsyncSandbox) -> None:
    # Each job ends about as the next command looks for an init to join: it joins, or finds
    # the init ended (ESRCH, or its namespace closing) and starts a new one; never a command
    # killed with a namespace, never an error. Two at a time, to race one another too.
    async def one(index: int) -> None:
        await sandbox.run(f"sleep 0.00{index % 10} >/dev/null 2>&1 &")
        done = await sandbox.run("echo $((6 * 7))")
        assert (done.stdout, done.stderr, done.exit_code) == ("42\n", "", 0)

    for index in range(0, 120, 2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, index)
            tg.start_soon(one, index + 1)


CHECKS = (
    "stat -c '%U %a %n' /tmp /home /home/sandbox /dev/shm; "
    "df --output=size -B1M /tmp /home /dev/shm | tail -3 | tr -d ' '; "
    "cat /workspace/README.md; touch /workspace/new 2>&1 | grep -o 'Read-only file system'; "
    "ls /run/agentfense"
)


async def test_a_sandbox_built_ahead_is_the_one_built_for_it(tmp_path: Path, project: Path) -> None:
    state = tmp_path / "state"
    with start_server_process(state) as server:
        seen = []
        for _ in range(3):  # the first is built at its start; the pool is filled meanwhile
            async with await AsyncSandbox.from_local(
                project, endpoint=server.endpoint, preset="read-only"
            ) as sandbox:
                done = await sandbox.run(CHECKS)
                assert done.exit_code == 0, done.stderr
                seen.append((done.stdout, (server.state_dir / "logs" / f"{sandbox.id}.log")))
            await anyio.sleep(0.5)
        expected = (
            "sandbox 1777 /tmp\nsandbox 755 /home\nsandbox 700 /home/sandbox\n"
            "sandbox 755 /dev/shm\n"
        )
        for stdout, _ in seen:
            assert stdout.startswith(expected), stdout
            assert stdout.endswith("# demo\nRead-only file system\nbash\n"), stdout
        assert len({stdout for stdout, _ in seen}) == 1  # the same sizes, files, everything
        # (a sandbox built at its start has a log of its bwrap's; one taken ahead has none)
        assert [log.exists() for _, log in seen] == [True, False, False]


async def test_a_command_racing_a_stop_is_told_the_sandbox_stopped(
    client: AsyncSandboxClient,
) -> None:
    """A command started as its sandbox stops either runs or is refused with "the sandbox
    stopped"; its launcher once met the sandbox's cgroups removed under it, and the client
    got ENOENT as a failure of the server's."""
    codebase = await client.create_codebase("stop-race")
    outcomes: list[str] = []
    try:
        for attempt in range(40):
            info = await client.create_sandbox(codebase.id, start=True)

            async def command(sandbox_id: str) -> None:
                try:
                    await client.exec(sandbox_id, "true")
                except SandboxNotRunningError:
                    outcomes.append("refused")
                else:
                    outcomes.append("ran")

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(command, info.id)
                await anyio.sleep(attempt * 0.0003)
                await client.stop_sandbox(info.id)
            await client.destroy_sandbox(info.id)
    finally:
        for left in await client.list_sandboxes(codebase.id):
            await client.destroy_sandbox(left.id)
        await client.delete_codebase(codebase.id)
    assert len(outcomes) == 40
