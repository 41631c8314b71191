"""A hostile agent inside a sandbox, on bwrap and on Docker (a real server, real bwrap, a real
dockerd): it cannot kill what holds the sandbox up, leave anything in a later command's $HOME,
starve other sandboxes of processes, fill memory through /tmp, or ptrace a later command; and
on bwrap, look into or forge a later command through its /proc files, or leave a process that
plants files in a later command's (or a session's) $HOME."""

from __future__ import annotations

import fcntl
import fnmatch
import os
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    ResourceLimits,
    RuntimeType,
    SandboxNotRunningError,
    SandboxStatus,
)
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
PYTHON_IMAGE = "python:3.11-slim"  # scripts/docker-images.sh builds it (python3, procps)
RUNTIMES = [
    pytest.param({}, id="bwrap"),
    pytest.param({"runtime": RuntimeType.DOCKER, "image": PYTHON_IMAGE}, id="docker"),
]
SIGNALS = "INT TERM HUP QUIT USR1 USR2 PIPE ALRM STOP TSTP CONT KILL"
PTRACE = """python3 -c '
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[1])
for name, call in [
    ("ptrace", lambda: libc.ptrace(16, pid, 0, 0)),  # PTRACE_ATTACH
    ("process_vm_readv", lambda: libc.process_vm_readv(pid, 0, 0, 0, 0, 0)),
]:
    print(name, call(), os.strerror(ctypes.get_errno()))
' """

IO_URING = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)  # struct io_uring_params
print(libc.syscall(425, 4, params), os.strerror(ctypes.get_errno()))  # io_uring_setup
"""


def _host_pids(marker: str) -> list[int]:
    """The host pids of the processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in Path(f"/proc/{entry}/cmdline").read_text():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split()[1]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


async def _leave_marker(sandbox: AsyncSandbox) -> int:
    """Leave a process running in the sandbox; its pid on the host."""
    marker = f"{int(time.time() * 1000) % 100000}.{uuid.uuid4().int % 10**6}"
    await sandbox.run(f"sleep {marker} >/dev/null 2>&1 &")
    for _ in range(100):
        pids = _host_pids(f"sleep\0{marker}")
        if pids:
            return pids[0]
        await anyio.sleep(0.02)
    raise AssertionError("the marker process is not on the host")


@pytest.mark.parametrize("options", RUNTIMES)
async def test_no_signal_from_inside_ends_the_sandbox(
    endpoint: str, project: Path, options: dict[str, object]
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint, **options) as sandbox:  # type: ignore[arg-type]
        sent = await sandbox.run(f"for s in {SIGNALS}; do kill -$s 1; done; echo sent")
        assert sent.stdout == "sent\n"
        after = await sandbox.run("echo still here")
        assert (after.stdout, after.exit_code) == ("still here\n", 0)
        assert (await sandbox.refresh()).status is SandboxStatus.RUNNING


@pytest.mark.parametrize("options", RUNTIMES)
async def test_a_sandbox_killed_from_the_host_starts_again(
    endpoint: str, project: Path, options: dict[str, object]
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint, **options) as sandbox:  # type: ignore[arg-type]
        leftover = await _leave_marker(sandbox)
        # bwrap: the init of the commands' pid namespace (no process holds the sandbox
        # itself: killing every process of it takes only what ran). Docker: its pid 1.
        holder = int(_status_field(leftover, "PPid"))
        os.kill(holder, signal.SIGKILL)
        for _ in range(200):
            try:
                os.kill(leftover, 0)
            except ProcessLookupError:
                break
            await anyio.sleep(0.02)
        else:
            raise AssertionError("what the killed process held up still runs")
        if options:  # Docker: the container is gone
            with pytest.raises(SandboxNotRunningError):
                await sandbox.run("true")
        else:
            alive = await sandbox.run("echo alive")
            assert (alive.stdout, alive.exit_code) == ("alive\n", 0)
            await sandbox.stop()
        for _ in range(2):  # twice: a second run's start finds the first's leftovers too
            await sandbox.start()
            result = await sandbox.run("echo back; echo $((1 + 1))")
            assert (result.stdout, result.exit_code) == ("back\n2\n", 0)


@pytest.mark.parametrize("options", RUNTIMES)
async def test_each_command_has_a_fresh_home_and_each_session_its_own(
    endpoint: str, project: Path, options: dict[str, object]
) -> None:
    plant = (
        "site=$(python3 -c 'import site; print(site.getusersitepackages())') && "
        'mkdir -p "$site" && echo \'print("forged"); raise SystemExit(0)\' '
        '> "$site/usercustomize.py" && echo planted'
    )
    async with await AsyncSandbox.from_local(project, endpoint=endpoint, **options) as sandbox:  # type: ignore[arg-type]
        assert (await sandbox.run(plant)).stdout == "planted\n"
        honest = await sandbox.run("python3 -c 'print(6 * 7)'; ls -A ~")
        assert (honest.stdout, honest.exit_code) == ("42\n", 0)
        async with sandbox.session() as session:
            await session.exec("echo kept > ~/note; first=$HOME")
            kept = await session.exec('cat ~/note; [ "$HOME" = "$first" ] && echo same')
            assert kept.stdout == "kept\nsame\n"
        assert (await sandbox.run("ls -A ~")).stdout == ""
        # A command that fills its home: its home goes when it exits.
        filled = await sandbox.run("dd if=/dev/zero of=$HOME/fill bs=1M count=4096")
        assert "No space left on device" in filled.stderr
        used = await sandbox.run(  # (removed in the background as the command exits)
            "for i in $(seq 100); do [ $(du -sk /home | cut -f1) -lt 1024 ] && break; "
            "sleep 0.05; done; du -sk /home | cut -f1"
        )
        assert int(used.stdout) < 1024


@pytest.mark.parametrize("options", RUNTIMES)
async def test_a_full_tmp_is_enospc_for_the_writer_not_an_oom_kill(
    endpoint: str, project: Path, options: dict[str, object]
) -> None:
    limits = ResourceLimits(memory_bytes=256 * MiB)
    async with await AsyncSandbox.from_local(
        project,
        endpoint=endpoint,
        resources=limits,
        **options,  # type: ignore[arg-type]
    ) as sandbox:
        for path in ("/tmp", "/dev/shm", "$HOME"):
            filled = await sandbox.run(f"dd if=/dev/zero of={path}/fill bs=1M count=1024")
            assert filled.exit_code != 0
            assert "No space left on device" in filled.stderr
            assert filled.limit_exceeded is None
        sizes = await sandbox.run("df -k /tmp /home /dev/shm | tail -n +2 | awk '{print $2}'")
        assert [int(size) * 1024 for size in sizes.stdout.split()] == [64 * MiB, 32 * MiB, 32 * MiB]
        after = await sandbox.run("rm /tmp/fill /dev/shm/fill; echo usable")
        assert (after.stdout, after.exit_code) == ("usable\n", 0)
        assert (await sandbox.refresh()).status is SandboxStatus.RUNNING


@pytest.mark.parametrize("options", RUNTIMES)
async def test_a_leftover_process_cannot_ptrace_a_later_command(
    endpoint: str, project: Path, options: dict[str, object]
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint, **options) as sandbox:  # type: ignore[arg-type]
        target = await sandbox.run("sleep 30 >/dev/null 2>&1 & echo $!")
        attempt = await sandbox.run(PTRACE + target.stdout.strip())
        assert attempt.stdout.splitlines() == [
            "ptrace -1 Operation not permitted",
            "process_vm_readv -1 Operation not permitted",
        ]
        ordinary = await sandbox.run(
            "python3 -c 'import subprocess; print(subprocess.run([\"true\"]).returncode)'"
        )
        assert ordinary.stdout == "0\n"


@pytest.mark.parametrize("options", RUNTIMES)
async def test_io_uring_is_not_there(
    endpoint: str, project: Path, options: dict[str, object]
) -> None:
    """A ring would be a way into a large part of the kernel, and its requests (a socket
    opened, say) are made where no seccomp filter sees them: ENOSYS, as on a kernel without
    it, so programs fall back to ordinary calls. (This host's kernel has it.)"""
    host = await anyio.run_process([sys.executable, "-c", IO_URING])
    assert host.stdout.decode().endswith(" Success\n"), host.stdout
    async with await AsyncSandbox.from_local(project, endpoint=endpoint, **options) as sandbox:  # type: ignore[arg-type]
        result = await sandbox.run(f"python3 -c {shlex.quote(IO_URING)}")
        assert result.stdout == "-1 Function not implemented\n", result.stderr


SPY = """
import os, re, signal, sys, time
me, found = os.getpid(), None
deadline = time.time() + 30
while found is None and time.time() < deadline:
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(entry) != me and (
                b"VICTIM" in open(f"/proc/{entry}/cmdline", "rb").read()
            ):
                found = int(entry)
        except OSError:
            continue
    time.sleep(0.01)
def attempt(name, call):
    try:
        call()
        return f"{name} ok"
    except OSError as exc:
        return f"{name} {exc.strerror}"
def forge():
    fd = os.open(f"/proc/{found}/mem", os.O_RDWR)
    for line in open(f"/proc/{found}/maps"):
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) rw", line)
        if m:
            start, end = int(m[1], 16), int(m[2], 16)
            data = os.pread(fd, end - start, start)
            for hit in re.finditer(b"ORIGINAL", data):
                os.pwrite(fd, b"FORGED!!", start + hit.start())
report = [
    attempt("environ", lambda: open(f"/proc/{found}/environ", "rb").read()),
    attempt("fd", lambda: open(f"/proc/{found}/fd/1", "w").write("FORGED\\n")),
    attempt("mem", forge),
]
open("/tmp/spy.log", "w").write("\\n".join(report) + "\\n")
"""
VICTIM = 'python3 -c \'import time; r = "ORIG" "INAL"; time.sleep(1.5); print(r)\' VICTIM'


async def test_a_leftover_cannot_look_into_or_forge_a_later_command(
    endpoint: str, project: Path
) -> None:
    # (bwrap: each command is a Landlock domain of its own. Docker: test_hostile_docker.py.)
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        await sandbox.write_file("/tmp/spy.py", SPY)
        await sandbox.run("setsid python3 /tmp/spy.py >/dev/null 2>&1 &")
        victim = await sandbox.run(VICTIM, env={"SECRET": "hunter2"})
        assert (victim.stdout, victim.exit_code) == ("ORIGINAL\n", 0)
        log = await sandbox.run(
            "while [ ! -s /tmp/spy.log ]; do sleep 0.05; done; cat /tmp/spy.log"
        )
        assert log.stdout.splitlines() == [
            "environ Permission denied",
            "fd Permission denied",
            "mem Permission denied",
        ]
        # Signals are not scoped: a later command stops what an earlier one left running.
        await sandbox.run("sleep 300 >/dev/null 2>&1 &")
        stopped = await sandbox.run("pkill -x sleep && echo stopped")
        assert (stopped.stdout, stopped.exit_code) == ("stopped\n", 0)


async def test_a_command_still_signals_waits_for_and_reads_its_own_children(
    endpoint: str, project: Path
) -> None:
    own = (
        "sleep 30 & kill -0 $! && echo alive; kill $!; wait $!; echo $?; "
        "SECRET=own sleep 30 & for i in $(seq 100); do "
        "tr '\\0' '\\n' < /proc/$!/environ | grep ^SECRET && break; sleep 0.05; done; "
        "kill $!; yes | head -n 1"
    )
    expected = "alive\n143\nSECRET=own\ny\n"
    # Its domain refuses no link or rename into another directory (one refuses them unless a
    # rule allows them): git, mv and package managers depend on both.
    moves = (
        "mkdir -p /tmp/a /tmp/b && echo x > /tmp/a/f && python3 -c '"
        'import os; os.rename("/tmp/a/f", "/tmp/b/f"); os.link("/tmp/b/f", "/tmp/a/g"); '
        'print(open("/tmp/a/g").read().strip())\''
    )
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        result = await sandbox.run(own)
        assert (result.stdout, result.exit_code) == (expected, 0)
        moved = await sandbox.run(moves)
        assert (moved.stdout, moved.stderr, moved.exit_code) == ("x\n", "", 0)
        async with sandbox.session() as session:  # one domain: a later command's own job
            await session.exec("sleep 30 >/dev/null 2>&1 &")
            later = await session.exec("kill %1; wait %1; echo $?")
            assert (later.stdout, later.exit_code) == ("143\n", 0)


PLANTER = """
import os, site, time
seen = set(os.listdir("/home"))
open("/tmp/planter.ready", "w").close()
site_dir = site.getusersitepackages().replace(os.environ["HOME"], "{home}")
plants = {
    site_dir + "/usercustomize.py": 'print("forged"); raise SystemExit(0)\\n',
    "{home}/.bashrc": "echo forged\\n",
    "{home}/.gitconfig": "[core]\\n\\tpager = echo forged\\n",
}
report = []
deadline = time.time() + 30
while not report and time.time() < deadline:
    for name in set(os.listdir("/home")) - seen:
        home = "/home/" + name
        for path, text in plants.items():
            path = path.format(home=home)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as planted:
                    planted.write(text)
                report.append(path.replace(home, "~") + " planted")
            except OSError as exc:
                report.append(path.replace(home, "~") + " " + exc.strerror)
        break
    time.sleep(0.001)
open("/tmp/plant.log", "w").write("\\n".join(report) + "\\n")
"""
PLANT = (  # (once it returns, the planter knows which homes are there already)
    "setsid python3 /tmp/planter.py >/dev/null 2>&1 & "
    "while [ ! -e /tmp/planter.ready ]; do sleep 0.01; done"
)
WAIT_PLANTED = "while [ ! -s /tmp/plant.log ]; do sleep 0.01; done"
REFUSED = [  # (where makedirs refuses the first directory, the file's open says the same)
    f"~/{path} Permission denied"
    for path in (".local/lib/python3.*/site-packages/usercustomize.py", ".bashrc", ".gitconfig")
]


async def _plant_log(sandbox: AsyncSandbox) -> list[str]:
    return (await sandbox.run(f"{WAIT_PLANTED}; cat /tmp/plant.log")).stdout.splitlines()


def _wait_for(path: str) -> str:
    """A shell loop that waits (5 s at most) for a non-empty file at ``path``."""
    return f"for i in $(seq 100); do [ -s {path} ] && break; sleep 0.05; done"


def _matches(lines: list[str], patterns: list[str]) -> bool:
    return len(lines) == len(patterns) and all(map(fnmatch.fnmatchcase, lines, patterns))


async def test_a_leftover_cannot_plant_files_in_a_later_commands_home(
    endpoint: str, project: Path
) -> None:
    # (bwrap: each command may write beneath its own $HOME, no other one under /home.)
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        await sandbox.write_file("/tmp/planter.py", PLANTER)
        await sandbox.run(PLANT)
        # (It waits for the planter to have tried its home before python3 starts.)
        honest = await sandbox.run(f"{WAIT_PLANTED}; python3 -c 'print(6 * 7)'; ls -A ~")
        assert (honest.stdout, honest.exit_code) == ("42\n", 0)
        assert _matches(await _plant_log(sandbox), REFUSED)
        # Nor in a session's home, which lasts as long as the session.
        await sandbox.run(f"rm /tmp/plant.log /tmp/planter.ready; {PLANT}")
        async with sandbox.session() as session:
            await session.exec(WAIT_PLANTED)
            assert _matches(await _plant_log(sandbox), REFUSED)
            inside = await session.exec("python3 -c 'print(6 * 7)'; ls -A ~")
            assert (inside.stdout, inside.exit_code) == ("42\n", 0)
            # The session's own commands, and what they leave running, are one trust unit.
            await session.exec("(sleep 0.2; echo later > ~/note) &")
            kept = await session.exec(f"{_wait_for('~/note')}; cat ~/note")
            assert kept.stdout == "later\n"


MOVES = """
import os, socket
home = os.environ["HOME"]
for top in ("/tmp", home, "/workspace"):
    os.makedirs(top + "/a/d"); os.mkdir(top + "/b")
    open(top + "/a/d/f", "w").write("x")
    os.rename(top + "/a/d", top + "/b/d")  # into another directory: a file, a directory
    os.link(top + "/b/d/f", top + "/a/g")
    os.symlink("g", top + "/a/s")
    os.truncate(top + "/a/s", 0)
    os.unlink(top + "/a/g"); os.unlink(top + "/a/s"); os.unlink(top + "/b/d/f")
    os.rmdir(top + "/b/d"); os.rmdir(top + "/b"); os.rmdir(top + "/a")
os.mkfifo(home + "/fifo")
socket.socket(socket.AF_UNIX).bind(home + "/sock")
for path in ("/dev/null", "/proc/self/fd/1"):
    with open(path, "w") as out:
        out.write(path + " ")
for path in ("/usr/evil", "/evil", "/home/evil", "/home/sandbox/evil"):
    try:
        open(path, "w")
    except OSError as exc:
        print(path, exc.strerror)
"""


async def test_a_command_still_writes_where_it_did_and_nowhere_else(
    endpoint: str, project: Path
) -> None:
    # (bwrap: a command's domain handles the rights that write, allowed outside /home.)
    async with await AsyncSandbox.from_local(
        project, preset="full-access", endpoint=endpoint
    ) as sandbox:
        await sandbox.write_file("/tmp/moves.py", MOVES)
        result = await sandbox.run("python3 /tmp/moves.py | cat; ls -A ~")
        assert (result.stderr, result.exit_code) == ("", 0)
        assert result.stdout.splitlines() == [
            "/proc/self/fd/1 /usr/evil Read-only file system",  # (as without Landlock)
            "/evil Read-only file system",
            "/home/evil Permission denied",  # (anywhere under /home but its own $HOME)
            "/home/sandbox/evil Permission denied",
            "fifo",
            "sock",
        ]
        # Across mounts, mv copies and removes; a pipe reached through /proc works too.
        moved = await sandbox.run(
            "echo y > /tmp/m && mv /tmp/m ~/m && mv ~/m /workspace/m && mv /workspace/m /tmp/m "
            "&& cat /tmp/m | cat /proc/self/fd/0"
        )
        assert (moved.stdout, moved.stderr, moved.exit_code) == ("y\n", "", 0)


@pytest.fixture(scope="module")
def bomb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with no default pids limit and a small per-sandbox process limit."""
    running = start_server_process(
        tmp_path_factory.mktemp("bomb-server"),
        settings={"default_pids_limit": "0", "sandbox_max_processes": "300"},
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.mark.parametrize("options", RUNTIMES)
async def test_a_fork_bomb_starves_only_its_own_sandbox(
    bomb_server: ServerProcess, project: Path, options: dict[str, object]
) -> None:
    endpoint = bomb_server.endpoint
    async with (
        await AsyncSandbox.from_local(project, endpoint=endpoint, **options) as bomber,  # type: ignore[arg-type]
        await AsyncSandbox.from_local(project, endpoint=endpoint, **options) as other,  # type: ignore[arg-type]
    ):
        uids = {_status_field(await _leave_marker(box), "Uid") for box in (bomber, other)}
        assert len(uids) == 2  # a host uid each
        assert bomber.info.resources.pids_limit is None
        bombed = await bomber.run(
            "i=0; while [ $i -lt 400 ]; do sleep 60 & i=$((i + 1)); done; echo done", timeout=60
        )
        assert "fork" in bombed.stderr.lower()  # its shell ran out of processes
        result = await other.run("echo fine; sh -c 'echo forked'")
        assert (result.stdout, result.exit_code) == ("fine\nforked\n", 0)
        for uid in uids:  # held by this server while its sandboxes exist
            with pytest.raises(BlockingIOError):
                _lock(uid)
    for uid in uids:  # destroyed: released, for any server of the host to take
        _lock(uid)


def _lock(uid: str) -> None:
    """Take and drop a sandbox uid's lock as another server of the host would."""
    with open(f"/run/agentfense/uids/{uid}", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.parametrize("options", RUNTIMES)
async def test_the_oom_killer_takes_what_holds_the_sandbox_up_last(
    endpoint: str, project: Path, options: dict[str, object]
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=endpoint, **options) as sandbox:  # type: ignore[arg-type]
        leftover = await _leave_marker(sandbox)
        # bwrap: the init of the commands' pid namespace (its jobs go with it); Docker: pid 1
        holder = int(_status_field(leftover, "PPid"))
        held_up, command = (_oom_score_adj(pid) for pid in (holder, leftover))
        assert held_up <= 0
        assert command == 500


def _oom_score_adj(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as adj:
        return int(adj.read())


@pytest.mark.parametrize("options", RUNTIMES)
async def test_a_sandbox_that_asks_keeps_its_home(
    endpoint: str, project: Path, options: dict[str, object]
) -> None:
    async with await AsyncSandbox.from_local(
        project,
        endpoint=endpoint,
        keep_home=True,
        **options,  # type: ignore[arg-type]
    ) as sandbox:
        assert sandbox.info.keep_home
        await sandbox.run("mkdir ~/a ~/b && echo kept > ~/a/note && mv ~/a/note ~/b/")
        kept = await sandbox.run('cat ~/b/note; echo "$HOME"')
        assert kept.stdout == "kept\n/home/sandbox\n"
        # One home by choice: what a command leaves running may write in it later too.
        await sandbox.run("(sleep 0.2; echo later > ~/later) >/dev/null 2>&1 &")
        later = await sandbox.run(f"{_wait_for('~/later')}; cat ~/later")
        assert later.stdout == "later\n"
