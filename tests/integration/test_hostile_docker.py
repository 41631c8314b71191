"""A hostile agent in a Docker sandbox (a real server, a real dockerd): what one command leaves
running cannot look into, forge or plant into a later one, and a session's own background job
cannot read its shell's script; renames and a kept $HOME work as before. Without a C compiler
the server still runs Docker sandboxes, and says that their commands are not kept apart."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import pytest

from agentfense import (
    AsyncSandbox,
    InvalidConfigurationError,
    RuntimeType,
    SandboxError,
)
from agentfense.errors import StatusCode
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

PYTHON_IMAGE = "python:3.11-slim"  # scripts/docker-images.sh builds it (bash, python3)
BUSYBOX = "agentfense/busybox:latest"  # no bash, no python3


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.APIClient]:
    """The Docker engine the server uses; these tests need one (scripts/dockerd.sh)."""
    host = os.environ.get("DOCKER_HOST", "")
    api = docker.APIClient(base_url=host or "unix:///var/run/docker.sock", version="auto")
    try:
        for image in (PYTHON_IMAGE, BUSYBOX):
            api.inspect_image(image)  # type: ignore[no-untyped-call]  # (unannotated in types-docker)
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"these tests need dockerd with the images {PYTHON_IMAGE} and {BUSYBOX} "
            f"(DOCKER_HOST={host!r}): run scripts/dockerd.sh start and scripts/docker-images.sh "
            f"({exc})"
        )
    yield api
    api.close()


async def _sandbox(endpoint: str, project: Path, **options: object) -> AsyncSandbox:
    options.setdefault("image", PYTHON_IMAGE)
    return await AsyncSandbox.from_local(
        project,
        endpoint=endpoint,
        runtime=RuntimeType.DOCKER,
        **options,  # type: ignore[arg-type]
    )


# Waits for the later command (its command line says VICTIM), then tries to read its
# environment, write to its stdout and forge its memory; writes what it got to /tmp/spy.log.
SPY = """
import os, re, time
me, found = os.getpid(), []
deadline = time.time() + 30
while not found and time.time() < deadline:
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(entry) != me and (
                b"import time" in open(f"/proc/{entry}/cmdline", "rb").read()
            ):
                found.append(int(entry))
        except OSError:
            continue
    time.sleep(0.01)
time.sleep(0.2)  # (till it is python, not the shell before it)
def attempt(name, call):
    outcomes = set()
    for pid in found:
        try:
            call(pid)
            outcomes.add(f"{name} ok")
        except OSError as exc:
            outcomes.add(f"{name} {exc.strerror}")
    return ",".join(sorted(outcomes))
def forge(pid):
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    for line in open(f"/proc/{pid}/maps"):
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) rw", line)
        if m:
            start, end = int(m[1], 16), int(m[2], 16)
            data = os.pread(fd, end - start, start)
            for hit in re.finditer(b"ORIGINAL", data):
                os.pwrite(fd, b"FORGED!!", start + hit.start())
report = [
    attempt("environ", lambda pid: open(f"/proc/{pid}/environ", "rb").read()),
    attempt("fd", lambda pid: open(f"/proc/{pid}/fd/1", "w").write("FORGED\\n")),
    attempt("mem", forge),
]
open("/tmp/spy.log", "w").write("\\n".join(report) + "\\n")
"""
VICTIM = 'python3 -c \'import time; r = "ORIG" "INAL"; time.sleep(1.5); print(r)\''


async def test_a_leftover_cannot_look_into_or_forge_a_later_command(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    async with await _sandbox(endpoint, project) as sandbox:
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


# Plants a file in every new $HOME under /home it sees, for 30 s; logs what it got.
PLANTER = """
import os, time
seen = set(os.listdir("/home"))
deadline = time.time() + 30
while time.time() < deadline:
    for name in set(os.listdir("/home")) - seen:
        seen.add(name)
        try:
            open(f"/home/{name}/.bashrc", "w").write("echo planted\\n")
            outcome = "planted"
        except OSError as exc:
            outcome = exc.strerror
        open("/tmp/planter.log", "a").write(outcome + "\\n")
    time.sleep(0.005)
"""


async def test_a_leftover_cannot_plant_into_a_later_commands_home(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    async with await _sandbox(endpoint, project) as sandbox:
        await sandbox.write_file("/tmp/planter.py", PLANTER)
        await sandbox.run("setsid python3 /tmp/planter.py >/dev/null 2>&1 &")
        later = await sandbox.run(
            'while [ ! -s /tmp/planter.log ]; do sleep 0.02; done; ls -A "$HOME"; '
            "touch ~/own && echo own"
        )
        assert (later.stdout, later.exit_code) == ("own\n", 0)
        log = await sandbox.run("cat /tmp/planter.log")
        assert log.stdout.splitlines()[0] == "Permission denied"
        # Nor write into /home itself, where the next homes are made.
        beside = await sandbox.run("touch /home/home-beside")
        assert "Permission denied" in beside.stderr


# A session's background job: tries to list and open its shell's fds (bash reads its script,
# each command's line and end-marker token, on fd 255); writes what it got to /tmp/job.log.
JOB = """
import os, sys, time
shell = int(sys.argv[1])
report = []
try:
    report.append("fds " + " ".join(sorted(os.listdir(f"/proc/{shell}/fd"))))
except OSError as exc:
    report.append(f"fds {exc.strerror}")
try:
    fd = os.open(f"/proc/{shell}/fd/255", os.O_RDONLY | os.O_NONBLOCK)
    report.append("script ok")
except OSError as exc:
    report.append(f"script {exc.strerror}")
    fd = None
open("/tmp/job.log", "w").write("\\n".join(report) + "\\n")
stolen = b""
deadline = time.time() + 5
while fd is not None and time.time() < deadline:
    try:
        stolen += os.read(fd, 65536)
    except BlockingIOError:
        time.sleep(0.001)
if stolen:
    open("/tmp/job.log", "a").write("stolen\\n")
"""


async def test_a_sessions_background_job_cannot_read_its_shells_script(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    async with await _sandbox(endpoint, project) as sandbox:
        await sandbox.write_file("/tmp/job.py", JOB)
        async with sandbox.session() as session:
            assert session.shell == "bash"
            await session.exec("python3 /tmp/job.py $$ >/dev/null 2>&1 &")
            await session.exec("while [ ! -s /tmp/job.log ]; do sleep 0.02; done")
            for i in range(3):  # each line reaches the shell, whole
                after = await session.exec(f"echo line {i}", timeout=10)
                assert (after.stdout, after.exit_code) == (f"line {i}\n", 0)
            log = await session.exec("cat /tmp/job.log")
            assert log.stdout.splitlines() == ["fds Permission denied", "script Permission denied"]
            # Its shell is a copy no one may read or change.
            copy = await session.exec("cat /proc/$$/exe >/dev/null; touch /run/agentfense/x")
            assert copy.stderr.count("Permission denied") == 2
            # Its commands, and their jobs, share its domain: a later one stops an earlier one's.
            await session.exec("sleep 30 >/dev/null 2>&1 &")
            later = await session.exec("kill $!; wait $!; echo $?")
            assert (later.stdout, later.exit_code) == ("143\n", 0)


async def test_renames_between_tmp_the_workspace_and_home_still_work(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    moves = (
        "set -e; echo x > /tmp/f; mv /tmp/f /workspace/f; mv /workspace/f ~/f; mv ~/f /tmp/g; "
        "mkdir -p /tmp/a /tmp/b ~/a /workspace/a; echo y > /tmp/a/f; "
        'python3 -c \'import os; os.rename("/tmp/a/f", "/tmp/b/f"); '
        'os.link("/tmp/b/f", "/tmp/a/h")\'; '
        "echo z > ~/a/f; mv ~/a/f ~/b; echo w > /workspace/a/f; mv /workspace/a/f /workspace/b; "
        "cat /tmp/g /tmp/a/h ~/b /workspace/b"
    )
    async with await _sandbox(endpoint, project, preset="development") as sandbox:
        moved = await sandbox.run(moves)
        assert (moved.stdout, moved.stderr, moved.exit_code) == ("x\ny\nz\nw\n", "", 0)
        assert (await sandbox.read_file("/workspace/b")) == "w\n"


async def test_a_sandbox_that_keeps_its_home_shares_it(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    async with await _sandbox(endpoint, project, keep_home=True) as sandbox:
        await sandbox.run("(sleep 0.5; echo late > ~/late) >/dev/null 2>&1 & echo kept > ~/note")
        kept = await sandbox.run('sleep 1; cat ~/note ~/late; echo "$HOME"')
        assert (kept.stdout, kept.exit_code) == ("kept\nlate\n/home/sandbox\n", 0)
        async with sandbox.session() as session:
            assert (await session.exec("cat ~/note")).stdout == "kept\n"


async def test_sessions_in_an_image_without_bash_get_its_sh_and_never_pass_it_off_as_bash(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    async with await _sandbox(endpoint, project, image=BUSYBOX) as sandbox:
        async with sandbox.session() as session:
            assert session.shell == "sh"
            fds = await session.exec("ls /proc/$$/fd")
            assert "Permission denied" in fds.stderr
        with pytest.raises(SandboxError, match="bash"):
            await sandbox.session(shell="bash")


async def test_reading_what_never_ends_outside_the_workspace_ends_at_once_in_busybox(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    """As on bwrap (test_sandbox_files.py), with busybox's sh and tools."""
    async with await _sandbox(endpoint, project, image=BUSYBOX) as sandbox:
        planted = await sandbox.run("ln -s /dev/zero /tmp/zero && mkfifo /tmp/pipe")
        assert planted.exit_code == 0, planted.stderr
        for path in ("/tmp/zero", "/tmp/pipe"):
            with anyio.fail_after(10), pytest.raises(InvalidConfigurationError) as refused:
                await sandbox.read_file_bytes(path)
            assert "is not a regular file" in str(refused.value)
        await sandbox.run("printf 'made\\n' > /tmp/made")
        assert await sandbox.read_file("/tmp/made") == "made\n"
        with pytest.raises(SandboxError) as missing:
            await sandbox.read_file("/tmp/none")
        assert missing.value.code == StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def server_without_cc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on a machine with no C compiler (``$CC`` names none)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CC", "/nonexistent/cc")
        running = start_server_process(tmp_path_factory.mktemp("server-without-cc"))
    yield running
    assert running.stop() == 0, running.log()


async def test_without_a_compiler_commands_run_unconfined_and_the_server_says_so(
    engine: docker.APIClient, server_without_cc: ServerProcess, project: Path
) -> None:
    endpoint = server_without_cc.endpoint
    for _ in range(2):  # the warning once, not at each start
        async with await _sandbox(endpoint, project) as sandbox:
            result = await sandbox.run("echo works; grep -c . /proc/self/environ >/dev/null")
            assert (result.stdout, result.exit_code) == ("works\n", 0)
            async with sandbox.session() as session:
                assert (await session.exec("echo $((6 * 7))")).stdout == "42\n"
    warnings = [
        line for line in server_without_cc.log().splitlines() if "run their commands" in line
    ]
    assert len(warnings) == 1
    assert "WARNING" in warnings[0]
    assert "no C compiler" in warnings[0]
    assert "install gcc and libc6-dev" in warnings[0]
