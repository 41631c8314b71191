"""A hostile agent (and a second server of the host) against held bwrap sandboxes
(runtimes/_held.py, launcher.c), on a real server as root with real bwrap: what the agent
design guaranteed still holds when no process holds the sandbox while it is idle."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandbox, AsyncSandboxClient
from agentfense.errors import SandboxError, SandboxNotFoundError
from agentfense.testing import ServerProcess, start_server_process

from ._procs import host_processes

pytestmark = pytest.mark.anyio

CGROUPS = Path("/sys/fs/cgroup")


@pytest.fixture
async def sandbox(endpoint: str, project: Path) -> AsyncIterator[AsyncSandbox]:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as created:
        yield created


def _processes_of(uid: int) -> list[int]:
    """The host's processes whose real uid is ``uid``."""
    found = []
    for name in os.listdir("/proc"):
        try:
            status = (Path("/proc") / name / "status").read_text() if name.isdigit() else ""
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == uid:
                found.append(int(name))
    return found


def _cgroups_of(sandbox_id: str) -> list[Path]:
    """The sandbox's cgroups, v2 and v1 (``agentfense/<sandbox>.<run>``), wherever mounted."""
    return [
        path
        for pattern in (f"agentfense/{sandbox_id}.*", f"*/agentfense/{sandbox_id}.*")
        for path in CGROUPS.glob(pattern)
        if path.is_dir()
    ]


async def test_another_servers_start_spares_an_idle_sandbox(
    sandbox: AsyncSandbox, project: Path, tmp_path: Path
) -> None:
    # A held sandbox has no process while it is idle: a server's start, which removes the
    # cgroups of sandboxes gone with a killed server, took its cgroups for such, and every
    # later command of it failed (an internal error: no cgroup to make its leaf in).
    assert (await sandbox.run("echo before")).stdout == "before\n"
    cgroups = _cgroups_of(sandbox.id)
    assert cgroups
    # Idle for a while (an agent thinking): what the sweep sees after 60 s, without the wait.
    long_ago = time.time() - 120
    for path in cgroups:
        os.utime(path, (long_ago, long_ago))
    other = start_server_process(tmp_path / "other-server")  # another server of the host
    try:
        # Its sweep runs once its launcher is built, which its first sandbox waits for.
        async with await AsyncSandbox.from_local(project, endpoint=other.endpoint) as theirs:
            await theirs.run("true")
        await anyio.sleep(1)
    finally:
        assert other.stop() == 0, other.log()
    assert [path for path in cgroups if not path.is_dir()] == []
    assert (await sandbox.run("echo after")).stdout == "after\n"


async def test_a_home_made_unreachable_gets_its_mode_back(sandbox: AsyncSandbox) -> None:
    # /home is the sandbox's (its uid owns it) and a mode is no Landlock right: a command may
    # take /home's search right away from every later one. The guard, root, would not notice.
    hostile = await sandbox.run("chmod 000 /home && echo done")
    assert (hostile.stdout, hostile.exit_code) == ("done\n", 0)
    later = await sandbox.run("stat -c %a /home; touch ~/mine && echo home=ok")
    assert (later.stdout, later.stderr, later.exit_code) == ("755\nhome=ok\n", "", 0)


async def test_a_command_cannot_end_the_init_under_a_later_one(sandbox: AsyncSandbox) -> None:
    # Were the init the sandbox's uid, prlimit(2) would reach it: with RLIMIT_NOFILE 0 it
    # could not list /proc once its job ended, take its pid namespace for empty and end,
    # killing the commands that joined it (and their guards: no `exit`, their homes left).
    hostile = await sandbox.run(
        "sleep 1 >/dev/null 2>&1 & prlimit --pid 1 --nofile=0:0 --as=4096:4096; echo $?; "
        "renice -n 19 -p 1 >/dev/null; echo $?; kill -CHLD 1; echo $?"
    )
    assert hostile.stdout.splitlines() == ["1", "1", "1"]  # (EPERM, each)
    # A later command joins the job's init; the job ends while it runs.
    later = await sandbox.run("sleep 2; echo survived", timeout=30)
    assert (later.stdout, later.exit_code) == ("survived\n", 0)
    assert (await sandbox.run("ls /home | grep -c '^home-'")).stdout == "1\n"  # its own


@pytest.fixture(scope="module")
def nproc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose sandboxes have no pids cgroup limit, only RLIMIT_NPROC (300)."""
    running = start_server_process(
        tmp_path_factory.mktemp("nproc-server"),
        settings={"default_pids_limit": "0", "sandbox_max_processes": "300"},
    )
    yield running
    assert running.stop() == 0, running.log()


async def test_the_process_limit_counts_every_command_together(
    nproc_server: ServerProcess, project: Path
) -> None:
    # RLIMIT_NPROC is counted per user namespace, and each command has one of its own: the
    # sandbox's uid makes it, so that it counts at that uid of the host too.
    async with await AsyncSandbox.from_local(project, endpoint=nproc_server.endpoint) as box:
        assert box.info.resources.pids_limit is None
        uid = int((await box.run("cat /proc/self/uid_map")).stdout.split()[1])
        leave = "i=0; while [ $i -lt 200 ]; do sleep 60 >/dev/null 2>&1 & i=$((i + 1)); done"
        await box.run(leave, timeout=60)
        second = await box.run(leave, timeout=60)  # 400 in all: past the sandbox's 300
        assert "fork" in second.stderr.lower()
        assert len(_processes_of(uid)) <= 300
        assert (await box.run("echo more")).stdout == "more\n"  # (killing what is left if need be)


async def test_commands_in_a_row_are_never_taken_for_killed(sandbox: AsyncSandbox) -> None:
    # Each command's guard ends just after its `exit`: the init, with nothing left, ends too,
    # while the next command may already be joining it (the server saw it alive). Joined
    # after the init's last look at its namespace, the command would be killed with it.
    # And a new init's launcher says `init PID` after starting it: a guard quick to say `ok`
    # came first, now and then, and the `init` line was then taken for the `exit` (137).
    failed = []
    for i in range(300):
        result = await sandbox.run("echo hi")
        if (result.stdout, result.exit_code) != ("hi\n", 0):
            failed.append((i, result.stdout, result.exit_code))
    assert failed == []


SPY_LIBRARY = r"""
#include <stdio.h>
#include <string.h>
__attribute__((constructor)) static void spy(void)
{
    FILE *out = fopen("/tmp/spied", "a"), *status = fopen("/proc/self/status", "r");
    char line[256];
    if (out == NULL || status == NULL)
        return;
    while (fgets(line, sizeof line, status))
        if (!strncmp(line, "Seccomp:", 8))
            fputs(line, out);
    fclose(out);
}
"""


async def test_no_process_of_a_command_runs_unconfined(sandbox: AsyncSandbox) -> None:
    # The guard removes a home left non-empty with /bin/rm, as the sandbox's uid, in no
    # Landlock domain and under no filter: with the command's environment, a library that the
    # client's LD_PRELOAD (or LD_LIBRARY_PATH) names, written by the command, ran in it.
    built = await sandbox.exec(
        "cat > /tmp/spy.c && cc -shared -fPIC -o /tmp/spy.so /tmp/spy.c && echo built",
        stdin=SPY_LIBRARY,
        timeout=60,
    )
    assert built.stdout == "built\n", built.stderr
    ran = await sandbox.exec("touch ~/left; echo ran", env={"LD_PRELOAD": "/tmp/spy.so"})
    assert ran.stdout == "ran\n"
    await anyio.sleep(0.5)  # (the home goes after the command's `exit`)
    spied = await sandbox.run("sort -u /tmp/spied")
    assert spied.stdout.split("\n")[:-1] == ["Seccomp:\t2"]  # filtered, every one of them


def _orphaned_bwraps(state_dir: Path) -> list[int]:
    """bwrap processes of this server's whose parent is gone (reparented to pid 1)."""
    found = []
    for pid, command in host_processes(b"bwrap\0").items():
        try:
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            fds = os.listdir(f"/proc/{pid}/fd")
            ours = any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(state_dir)) for fd in fds)
        except OSError:
            continue
        if parent == "1" and command.split(" ")[0].endswith("bwrap") and ours:
            found.append(pid)
    return found


async def test_starts_cancelled_as_bwrap_begins_leave_no_process(
    server: ServerProcess, client: AsyncSandboxClient
) -> None:
    """A start cancelled while bwrap built its sandbox killed bwrap, whose child (waiting on
    an eventfd for bwrap to map its ids, which has no end of file) then waited forever."""
    codebase = await client.create_codebase("cancelled-builds")
    try:
        for attempt in range(150):  # (cut short at every moment of the first 30 ms)
            with anyio.move_on_after((attempt % 30) * 0.001):
                await client.create_sandbox(codebase.id, start=True)
    finally:
        for _ in range(100):  # (a create the client gave up on may still be finishing)
            for info in await client.list_sandboxes(codebase.id):
                with contextlib.suppress(SandboxNotFoundError):
                    await client.destroy_sandbox(info.id)
            try:
                await client.delete_codebase(codebase.id)
                break
            except SandboxError:
                await anyio.sleep(0.05)
    orphans: list[int] = []
    for _ in range(50):
        orphans = _orphaned_bwraps(server.state_dir)
        if not orphans:
            break
        await anyio.sleep(0.05)
    assert orphans == []
