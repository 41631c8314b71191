"""The Docker runtime against a real dockerd (``$DOCKER_HOST``, started by scripts/test.sh
with ``--bridge=none --iptables=false``) and the images scripts/docker-images.sh builds."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    CommandTimeoutError,
    InvalidConfigurationError,
    ResourceLimits,
    RuntimeType,
    SandboxError,
    SessionStatus,
)
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

BUSYBOX = "agentfense/busybox:latest"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.APIClient]:
    """The Docker engine the server uses; these tests need one (scripts/dockerd.sh)."""
    host = os.environ.get("DOCKER_HOST", "")
    api = docker.APIClient(base_url=host or "unix:///var/run/docker.sock", version="auto")
    try:
        api.inspect_image(BUSYBOX)  # type: ignore[no-untyped-call]  # (unannotated in types-docker)
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"the Docker tests need dockerd with the image {BUSYBOX} (DOCKER_HOST={host!r}): "
            f"run scripts/dockerd.sh start and scripts/docker-images.sh ({exc})"
        )
    yield api
    api.close()


def _containers(api: docker.APIClient, sandbox_id: str) -> list[str]:
    found = api.containers(all=True, filters={"label": f"agentfense.sandbox={sandbox_id}"})
    return [c["Id"] for c in found]


async def _docker_sandbox(endpoint: str, project: Path, **options: object) -> AsyncSandbox:
    return await AsyncSandbox.from_local(
        project,
        endpoint=endpoint,
        runtime=RuntimeType.DOCKER,
        image=BUSYBOX,
        **options,  # type: ignore[arg-type]
    )


async def test_exec_semantics_match_bwrap(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    async with await _docker_sandbox(endpoint, project, preset="read-only") as sandbox:
        result = await sandbox.run("printf out; printf err >&2; exit 42")
        assert (result.stdout, result.stderr, result.exit_code) == ("out", "err", 42)
        piped = await sandbox.exec(
            "cat; echo $GREETING; pwd", stdin="in\n", env={"GREETING": "hi"}, workdir="src"
        )
        assert piped.stdout == "in\nhi\n/workspace/src\n"
        who = await sandbox.run("id -u; grep CapEff /proc/self/status; cat /proc/net/dev")
        uid, caps, *net = who.stdout.splitlines()
        assert uid != "0"
        assert caps.split() == ["CapEff:", "0000000000000000"]
        assert [line.split(":")[0].strip() for line in net[2:]] == ["lo"]  # --network none
        with pytest.raises(InvalidConfigurationError, match="workdir"):
            await sandbox.exec("true", workdir="/no/such/dir")


async def test_the_permission_view_holds_in_the_container(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    (project / ".env").write_text("SECRET=x\n")
    async with await _docker_sandbox(endpoint, project, preset="agent-safe") as sandbox:
        listing = await sandbox.run("ls -a /workspace")
        assert ".env" not in listing.stdout.split()
        assert "README.md" in listing.stdout.split()
        denied = await sandbox.run("echo x > /workspace/README.md")
        assert denied.exit_code != 0
        await sandbox.run("mkdir -p /workspace/output && echo report > /workspace/output/r.txt")
        data = await sandbox.client.download_file(sandbox.codebase_id, "output/r.txt")
        assert data == b"report\n"


async def test_timeouts_kill_every_process_of_the_command(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    marker = f"300.{uuid.uuid4().int % 10**9}"
    async with await _docker_sandbox(endpoint, project) as sandbox:
        with pytest.raises(CommandTimeoutError):
            await sandbox.run(f"sleep {marker} & sleep {marker}", timeout=0.5)
        assert marker not in (await sandbox.run("ps -o args")).stdout
        async with sandbox.exec_stream("echo one; echo two >&2; exit 3") as stream:
            chunks = [(c.stream.value, c.data) async for c in stream]
        assert sorted(chunks) == [("stderr", b"two\n"), ("stdout", b"one\n")]
        assert stream.exit_code == 3


async def test_sessions_in_a_container(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    marker = f"300.{uuid.uuid4().int % 10**9}"
    async with await _docker_sandbox(endpoint, project) as sandbox:
        async with sandbox.session() as session:
            assert session.shell == "sh"  # busybox has no bash
            await session.exec(f"cd /tmp; kept=yes; sleep {marker} &")
            assert (await session.exec("pwd; echo $kept")).stdout == "/tmp\nyes\n"
            assert marker in (await sandbox.run("ps -o args")).stdout
            # sh cannot skip the rest of a line: a timeout closes the session, whole.
            with pytest.raises(CommandTimeoutError, match="session was closed"):
                await session.exec("sleep 301; touch /tmp/flag", timeout=0.5)
            assert (await session.refresh()).status is SessionStatus.CLOSED
        assert marker not in (await sandbox.run("ps -o args")).stdout  # closed with it
        closing = await sandbox.session()
        assert (await closing.exec("exit 4")).exit_code == 4
        assert (await closing.refresh()).status is SessionStatus.CLOSED


async def test_commands_that_cannot_start_leave_no_descriptor_open_in_the_server(
    engine: docker.APIClient, server: ServerProcess, project: Path
) -> None:
    """Each exec refused by the engine (here a workdir that does not exist) kept the six
    ends of its three pipes open in the server: a client could run it out of descriptors."""
    async with await _docker_sandbox(server.endpoint, project) as sandbox:
        await sandbox.run("true")
        before = len(os.listdir(f"/proc/{server.process.pid}/fd"))
        for _ in range(30):
            with pytest.raises(InvalidConfigurationError, match="workdir"):
                await sandbox.exec("true", workdir="/no/such/dir")
        after = len(os.listdir(f"/proc/{server.process.pid}/fd"))
    assert after - before < 10, f"{after - before} more descriptors after 30 refused execs"


def _exec_host_pid(marker: str) -> int:
    """The host pid of the ``docker exec`` whose environment holds ``AF_MARK=marker``: the
    one such process whose parent does not hold it."""
    needle = f"AF_MARK={marker}".encode()
    marked = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    marked.add(int(entry))
            except OSError:
                continue
    tops = [
        pid
        for pid in marked
        if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) not in marked
    ]
    assert len(tops) == 1, tops
    return tops[0]


def _exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _process_at(pid: int) -> subprocess.Popen[bytes] | None:
    """A host process (a sleep) with exactly ``pid``, made the next pid to hand out; None
    when other processes of the host keep taking it first."""
    for _ in range(200):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        child = subprocess.Popen(["sleep", "60"])
        if child.pid == pid:
            return child
        child.kill()
        child.wait()
    return None


async def test_a_closed_session_kills_no_process_that_took_its_pid(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    """A session whose shell has ended is closed again when its sandbox stops: that close
    sent SIGKILL to the ended exec's host pid, whatever process of the host had it since."""
    marker = uuid.uuid4().hex
    async with await _docker_sandbox(endpoint, project) as sandbox:
        session = await sandbox.session(env={"AF_MARK": marker})
        pid = _exec_host_pid(marker)
        assert (await session.exec("exit 3")).exit_code == 3
        with anyio.fail_after(10):  # (the shell is gone, and its pid free)
            while True:
                if not _exists(pid):
                    break
                await anyio.sleep(0.01)
        bystander = _process_at(pid)
        assert bystander is not None, f"pid {pid} kept being taken by other processes"
        try:
            await sandbox.stop()  # (closes its sessions, this one again)
            await anyio.sleep(0.5)
            assert bystander.poll() is None, "the host process that took the pid was killed"
        finally:
            bystander.kill()
            bystander.wait()


async def test_stop_start_and_destroy(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    async with await _docker_sandbox(endpoint, project, preset="development") as sandbox:
        await sandbox.run("echo kept > /workspace/kept.txt; echo gone > /tmp/gone.txt")
        assert len(_containers(engine, sandbox.id)) == 1
        await sandbox.stop()
        assert _containers(engine, sandbox.id) == []
        await sandbox.start()
        result = await sandbox.run("cat /workspace/kept.txt; ls /tmp")
        assert result.stdout == "kept\n"
        sandbox_id = sandbox.id
    assert _containers(engine, sandbox_id) == []


async def test_limits_hold_in_a_container(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    limits = ResourceLimits(memory_bytes=32 * MiB, pids_limit=40)
    async with await _docker_sandbox(endpoint, project, resources=limits) as sandbox:
        inspected = engine.inspect_container(_containers(engine, sandbox.id)[0])["HostConfig"]
        assert (inspected["Memory"], inspected["PidsLimit"]) == (32 * MiB, 40)
        bomb = await sandbox.run("dd if=/dev/zero of=/dev/null bs=64M count=1")
        assert bomb.limit_exceeded == "memory"
        # The bomb fills the pids limit. Its shell either spins to the timeout or, when busybox
        # cannot fork for its own next pipeline, gives up at once (exit 2): either way the
        # limit is what struck, and the sandbox stays usable.
        try:
            bombed = await sandbox.run(
                "bomb() { bomb | bomb & }; bomb; while :; do :; done", timeout=2
            )
        except CommandTimeoutError:
            pass
        else:
            assert (bombed.exit_code, bombed.limit_exceeded) == (2, "pids"), bombed
        assert (await sandbox.run("echo usable")).stdout == "usable\n"


async def test_leftovers_that_fill_the_pids_limit_are_cleared_for_the_next_command(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    """Once the Docker copy of this retry was dead code: the next command answered UNKNOWN
    (an UnboundLocalError) where bwrap's recovered."""
    async with await _docker_sandbox(
        endpoint, project, resources=ResourceLimits(pids_limit=40)
    ) as sandbox:
        # Sleepers left in the background hold every pid the limit allows.
        left = await sandbox.run("for i in $(seq 100); do sleep 300 & done; wait")
        assert left.limit_exceeded == "pids"
        assert (await sandbox.run("echo still usable")).stdout == "still usable\n"
        async with sandbox.session() as session:
            assert (await session.exec("echo in a session")).stdout == "in a session\n"


def _cpu_seconds(api: docker.APIClient, container_id: str) -> float:
    """CPU time the container's processes used so far, from its cgroup on the host."""
    pid = api.inspect_container(container_id)["State"]["Pid"]
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _number, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            usage = Path("/sys/fs/cgroup/cpuacct") / path.lstrip("/") / "cpuacct.usage"
            return int(usage.read_text()) / 1e9
        if not controllers:
            stat = Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.stat"
            if stat.exists():
                usec = dict(line.split() for line in stat.read_text().splitlines())
                return int(usec["usage_usec"]) / 1e6
    raise AssertionError("no cpu accounting for the container")


async def test_cpu_quota_holds_a_hog_in_a_container(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    limits = ResourceLimits(cpu_quota=25_000)  # a quarter of a CPU
    async with await _docker_sandbox(endpoint, project, resources=limits) as sandbox:
        container = _containers(engine, sandbox.id)[0]
        before = _cpu_seconds(engine, container)
        hog = await sandbox.run("timeout 2 sh -c 'while :; do :; done'; true")
        used = _cpu_seconds(engine, container) - before
    wall = hog.duration.total_seconds()
    assert wall >= 1.9
    assert used < 0.25 * wall * 1.4


async def test_images_are_never_pulled_and_need_naming(
    engine: docker.APIClient, endpoint: str, project: Path
) -> None:
    missing = f"agentfense/missing-{uuid.uuid4().hex[:8]}:latest"
    with pytest.raises(SandboxError, match="never pulls") as refused:
        await AsyncSandbox.from_local(
            project, endpoint=endpoint, runtime=RuntimeType.DOCKER, image=missing
        )
    assert refused.value.code == 9
    with pytest.raises(InvalidConfigurationError, match="image"):
        await AsyncSandbox.from_local(project, endpoint=endpoint, runtime=RuntimeType.DOCKER)
    async with AsyncSandboxClient(endpoint) as client:
        assert all(c.name != project.name for c in await client.list_codebases())


async def test_no_engine_is_a_sentence_and_shutdown_leaves_no_container(
    engine: docker.APIClient, tmp_path: Path, project: Path
) -> None:
    nowhere = start_server_process(
        tmp_path / "no-docker", settings={"docker_host": f"unix://{tmp_path}/none.sock"}
    )
    try:
        with pytest.raises(SandboxError, match="needs a Docker engine") as refused:
            await _docker_sandbox(nowhere.endpoint, project)
        assert refused.value.code == 9
        bwrap = await AsyncSandbox.from_local(project, endpoint=nowhere.endpoint)  # still works
        await bwrap.destroy()
    finally:
        assert nowhere.stop() == 0
    server = start_server_process(tmp_path / "shutdown")
    try:
        sandbox = await _docker_sandbox(server.endpoint, project)
        await sandbox.run("sleep 300 &")
        sandbox_id = sandbox.id
        await sandbox.close()
    finally:
        assert server.stop() == 0
    assert _containers(engine, sandbox_id) == []
