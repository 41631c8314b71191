"""What an operator sees: lifecycle lines in the log at INFO (no grpclib per-call noise), and
Prometheus metrics on an opt-in port that move as the work happens. Real server, real bwrap,
scraped over real HTTP."""

from __future__ import annotations

import contextlib
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentfense import (
    AsyncSandboxClient,
    CommandTimeoutError,
    InvalidConfigurationError,
    Permission,
    PermissionRule,
    RuntimeType,
    SandboxError,
    SandboxNotFoundError,
)
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (what is measured is the server; the SDK's backends are tested elsewhere)


def _start(directory: Path, **settings: str) -> ServerProcess:
    return start_server_process(directory, settings={"expiry_check_interval": "0.2", **settings})


@pytest.fixture(scope="module")
def ops_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = _start(tmp_path_factory.mktemp("ops"), metrics_listen="127.0.0.1:0")
    yield running
    assert running.stop() == 0, running.log()


def metrics_address(server: ServerProcess) -> tuple[str, int]:
    found = re.search(r"metrics on http://([0-9.]+):(\d+)/metrics", server.log())
    assert found, server.log()
    return found[1], int(found[2])


def _get(server: ServerProcess, path: str = "/metrics") -> tuple[int, str]:
    host, port = metrics_address(server)
    host = "127.0.0.1" if host == "0.0.0.0" else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def scrape(server: ServerProcess) -> Samples:
    status, text = await anyio.to_thread.run_sync(_get, server)
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def lines(server: ServerProcess, event: str, **fields: str) -> list[str]:
    """The log's lines of ``event`` whose fields include ``fields``."""
    wanted = [f"{k}={v}" for k, v in fields.items()]
    return [
        line
        for line in server.log().splitlines()
        if f": {event} " in line and all(f" {w}" in f"{line} " for w in wanted)
    ]


async def has_moved(before: Samples, server: ServerProcess, name: str, **labels: str) -> bool:
    return moved(before, await scrape(server), name, **labels) > 0


async def wait_for_line(server: ServerProcess, event: str, **fields: str) -> str:
    with anyio.fail_after(10):
        while not (found := lines(server, event, **fields)):  # noqa: ASYNC110 - another process's log
            await anyio.sleep(0.05)
    return found[0]


async def test_a_lifecycle_is_logged_once_each_at_info_and_counted(
    ops_server: ServerProcess,
) -> None:
    before = await scrape(ops_server)
    async with AsyncSandboxClient(ops_server.endpoint) as client:
        codebase = await client.create_codebase("ops", owner_id="team-a")
        info = await client.create_sandbox(
            codebase.id, permissions=[PermissionRule("**", Permission.WRITE)]
        )
        sandbox = info.id
        running = await scrape(ops_server)  # (created, not started: pending)
        assert moved(before, running, "agentfense_sandboxes", state="pending", runtime="bwrap") == 1
        await client.start_sandbox(sandbox)
        assert (await client.exec(sandbox, "head -c 12345 /dev/zero > made.bin")).exit_code == 0
        assert (await client.exec(sandbox, "true")).exit_code == 0
        assert (await client.exec(sandbox, "exit 3")).exit_code == 3
        with pytest.raises(CommandTimeoutError):
            await client.exec(sandbox, "sleep 30", timeout=0.3)
        with pytest.raises(InvalidConfigurationError):
            await client.exec(sandbox, "true", workdir="/no/such/dir")
        with pytest.raises(SandboxNotFoundError):
            await client.get_sandbox("sb_0000000000000000")
        session = await client.create_session(sandbox)
        assert (await client.session_exec(session.id, "echo hi")).stdout == "hi\n"
        during = await scrape(ops_server)
        assert moved(before, during, "agentfense_sessions") == 1
        assert moved(before, during, "agentfense_sandboxes", state="running", runtime="bwrap") == 1
        await client.destroy_session(session.id)
        await client.stop_sandbox(sandbox)
        stopped = await scrape(ops_server)
        assert moved(before, stopped, "agentfense_sessions") == 0
        assert moved(before, stopped, "agentfense_sandboxes", state="stopped", runtime="bwrap") == 1
        await client.destroy_sandbox(sandbox)
        await client.delete_codebase(codebase.id)
    after = await scrape(ops_server)

    # The log: one line per event, with the ids, the owner and the runtime.
    ids = {"sandbox_id": sandbox, "codebase_id": codebase.id, "owner": "team-a"}
    assert len(lines(ops_server, "codebase created", codebase_id=codebase.id, owner="team-a")) == 1
    for event in ("sandbox created", "sandbox started", "sandbox stopped", "sandbox destroyed"):
        found = lines(ops_server, event, runtime="bwrap", **ids)
        assert len(found) == 1, (event, ops_server.log())
        assert " INFO agentfense.server.lifecycle: " in found[0]
    assert re.search(r" seconds=\d+\.\d{3}", lines(ops_server, "sandbox started", **ids)[0])
    assert " why=requested " in lines(ops_server, "sandbox destroyed", **ids)[0] + " "
    opened = lines(ops_server, "session opened", session_id=session.id, sandbox_id=sandbox)
    closed = lines(ops_server, "session closed", session_id=session.id, sandbox_id=sandbox)
    assert len(opened) == len(closed) == 1
    assert len(lines(ops_server, "codebase deleted", codebase_id=codebase.id)) == 1

    # The metrics moved by exactly what happened.
    execs = "agentfense_execs_total"
    assert moved(before, after, execs, kind="exec", outcome="exit_zero") == 2
    assert moved(before, after, execs, kind="exec", outcome="exit_nonzero") == 1
    assert moved(before, after, execs, kind="exec", outcome="timeout") == 1
    assert moved(before, after, execs, kind="exec", outcome="error") == 1
    assert moved(before, after, execs, kind="session", outcome="exit_zero") >= 1
    durations = "agentfense_exec_duration_seconds_count"
    assert moved(before, after, durations, kind="exec") == 5
    assert moved(before, after, "agentfense_exec_duration_seconds_sum", kind="exec") >= 0.3
    assert moved(before, after, "agentfense_commits_total", result="changed") >= 1
    assert moved(before, after, "agentfense_commit_entries_total") >= 1
    assert moved(before, after, "agentfense_commit_bytes_total") == 12345
    fs_control = "agentfense_fs_control_requests_total"
    assert moved(before, after, fs_control, op="add_view", result="ok") == 1
    # (the write's; the other commands changed nothing, so no commit was asked for them)
    assert moved(before, after, fs_control, op="commit", result="ok") >= 1
    # The view's own requests: the file made (12345 bytes written), and the sandbox's reads.
    assert moved(before, after, "agentfense_fs_requests_total", op="mknod") >= 1
    assert moved(before, after, "agentfense_fs_requests_total", op="write") >= 1
    assert moved(before, after, "agentfense_fs_requests_total", op="lookup") >= 1
    rpcs = "agentfense_grpc_requests_total"
    assert moved(before, after, rpcs, method="SandboxService/Exec", code="OK") == 3
    assert moved(before, after, rpcs, method="SandboxService/Exec", code="DEADLINE_EXCEEDED") == 1
    assert moved(before, after, rpcs, method="SandboxService/Exec", code="INVALID_ARGUMENT") == 1
    assert moved(before, after, rpcs, method="SandboxService/GetSandbox", code="NOT_FOUND") == 1
    assert moved(before, after, rpcs, method="CodebaseService/CreateCodebase", code="OK") == 1
    for state in ("pending", "running", "stopped", "error"):
        assert moved(before, after, "agentfense_sandboxes", state=state, runtime="bwrap") == 0
    assert moved(before, after, "agentfense_lifecycle_events_total", event="sandbox_created") == 1
    assert moved(before, after, "agentfense_lifecycle_events_total", event="session_opened") == 1
    # No label takes an id.
    assert not any(re.search(r"sb_|cb_|ses_", repr(labels)) for _, labels in after)


async def test_a_command_that_changes_nothing_costs_no_commit(ops_server: ServerProcess) -> None:
    """Most commands only read: the view's generation (``fs.generation``) tells the server
    that nothing could need a commit, and it asks for none. Whatever may have changed the
    view is committed, what a process left running writes too, at the next command."""
    commits = "agentfense_fs_control_requests_total"
    async with AsyncSandboxClient(ops_server.endpoint) as client:
        codebase = await client.create_codebase("ops-commits")
        await client.upload_file(codebase.id, "README.md", b"hello\n")
        rules = [PermissionRule("**", Permission.WRITE)]
        sandbox = (await client.create_sandbox(codebase.id, permissions=rules)).id
        await client.start_sandbox(sandbox)

        async def run(command: str) -> None:
            result = await client.exec(sandbox, command)
            assert result.exit_code == 0, (command, result.stderr)

        async def files() -> set[str]:
            return {f.path for f in await client.list_files(codebase.id, recursive=True)}

        before = await scrape(ops_server)
        for command in ("cat README.md", "ls -la; stat README.md", "grep -rq hello ."):
            await run(command)
        reads = await scrape(ops_server)
        assert moved(before, reads, commits, op="commit", result="ok") == 0
        assert moved(before, reads, "agentfense_commits_total", result="unchanged") == 3
        for command in ("echo x > new.txt", "mkdir d", "mv new.txt d/", "chmod 600 README.md"):
            await run(command)
        assert await files() == {"README.md", "d", "d/new.txt"}
        await run("rm README.md")
        assert await files() == {"d", "d/new.txt"}
        writes = await scrape(ops_server)
        assert moved(reads, writes, commits, op="commit", result="ok") == 5
        await run("(sleep 0.5; echo late > d/late.txt) >/dev/null 2>&1 &")
        await anyio.sleep(1.5)
        await run("true")
        assert await files() == {"d", "d/new.txt", "d/late.txt"}
        await client.destroy_sandbox(sandbox)
        await client.delete_codebase(codebase.id)


async def test_a_cancelled_call_leaves_no_noise_at_info(ops_server: ServerProcess) -> None:
    async with AsyncSandboxClient(ops_server.endpoint) as client:
        codebase = await client.create_codebase("ops-cancel")
        sandbox = (await client.create_sandbox(codebase.id)).id
        await client.start_sandbox(sandbox)
        before = await scrape(ops_server)
        with anyio.move_on_after(0.5):
            await client.exec(sandbox, "sleep 30")
        with anyio.fail_after(10):  # the server has seen the cancellation
            cancelled = {"kind": "exec", "outcome": "cancelled"}
            while not await has_moved(before, ops_server, "agentfense_execs_total", **cancelled):  # noqa: ASYNC110 - the server's state
                await anyio.sleep(0.05)
        await client.destroy_sandbox(sandbox)
        await client.delete_codebase(codebase.id)
    after = await scrape(ops_server)
    assert (
        moved(
            before,
            after,
            "agentfense_grpc_requests_total",
            method="SandboxService/Exec",
            code="CANCELLED",
        )
        == 1
    )
    log = ops_server.log()
    assert "grpclib" not in log, log
    assert "Traceback" not in log, log
    assert "Request was cancelled" not in log, log


async def test_an_expired_sandbox_is_logged_as_expired_then_destroyed(
    ops_server: ServerProcess,
) -> None:
    async with AsyncSandboxClient(ops_server.endpoint) as client:
        codebase = await client.create_codebase("ops-expiry", owner_id="team-b")
        sandbox = (await client.create_sandbox(codebase.id, expires_in=0.5)).id
        expired = await wait_for_line(ops_server, "sandbox expired", sandbox_id=sandbox)
        destroyed = await wait_for_line(ops_server, "sandbox destroyed", sandbox_id=sandbox)
        await client.delete_codebase(codebase.id)
    assert " owner=team-b " in expired
    assert " runtime=bwrap " in expired
    assert " why=expired " in destroyed + " "


async def test_a_hostile_owner_cannot_forge_a_log_line(ops_server: ServerProcess) -> None:
    forged = "x\n2026-01-01 00:00:00,000 INFO agentfense.server.lifecycle: sandbox destroyed a=b"
    async with AsyncSandboxClient(ops_server.endpoint) as client:
        codebase = await client.create_codebase("ops evil=1", owner_id=forged)
        await client.delete_codebase(codebase.id)
    created = lines(ops_server, "codebase created", codebase_id=codebase.id)
    assert len(created) == 1
    assert ' name="ops evil=1"' in created[0]
    assert "\\n2026-01-01" in created[0]  # (escaped: still one line)
    assert not any(line.startswith("2026-01-01") for line in ops_server.log().splitlines())


async def test_the_endpoint_answers_only_metrics_and_bounds_its_clients(
    ops_server: ServerProcess,
) -> None:
    assert _get(ops_server, "/other")[0] == 404
    host, port = metrics_address(ops_server)
    with socket.create_connection((host, port), timeout=10) as oversize:
        oversize.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
        assert oversize.recv(64).startswith(b"HTTP/1.1 400 ")
    # Idle scrapers by the dozen stall neither the gRPC server nor, once gone, the metrics.
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(40)]
    try:
        async with AsyncSandboxClient(ops_server.endpoint) as client:
            with anyio.fail_after(5):
                codebase = await client.create_codebase("ops-idle")
                await client.delete_codebase(codebase.id)
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 10
    while True:  # (the 8 answered ones give up after 5 s at most)
        try:
            await scrape(ops_server)
            break
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise


async def test_debug_keeps_grpclib_lines_and_a_public_address_warns(tmp_path: Path) -> None:
    server = _start(tmp_path, metrics_listen="0.0.0.0:0", log_level="debug")
    try:
        assert "metrics listen on 0.0.0.0, which is not loopback" in server.log()
        async with AsyncSandboxClient(server.endpoint) as client:
            codebase = await client.create_codebase("ops-debug")
            sandbox = (await client.create_sandbox(codebase.id)).id
            await client.start_sandbox(sandbox)
            with anyio.move_on_after(0.5):
                await client.exec(sandbox, "sleep 30")
            await wait_for_line(server, "command finished", sandbox_id=sandbox)
            await client.destroy_sandbox(sandbox)
        with anyio.fail_after(10):
            while "DEBUG grpclib.server: Request was cancelled" not in server.log():  # noqa: ASYNC110 - another process's log
                await anyio.sleep(0.05)
        assert await scrape(server)  # (reachable through loopback too)
    finally:
        assert server.stop() == 0, server.log()


def test_a_bad_metrics_address_is_refused_with_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="metrics_listen must be 'host:port'"):
        _start(tmp_path, metrics_listen="nowhere")


async def test_a_docker_sandbox_is_logged_and_counted_as_docker(ops_server: ServerProcess) -> None:
    before = await scrape(ops_server)
    async with AsyncSandboxClient(ops_server.endpoint) as client:
        codebase = await client.create_codebase("ops-docker", owner_id="team-d")
        sandbox = (
            await client.create_sandbox(
                codebase.id, runtime=RuntimeType.DOCKER, image="agentfense/busybox:latest"
            )
        ).id
        await client.start_sandbox(sandbox)
        running = await scrape(ops_server)
        assert (await client.exec(sandbox, "exit 4")).exit_code == 4
        await client.destroy_sandbox(sandbox)
        await client.delete_codebase(codebase.id)
    after = await scrape(ops_server)
    assert moved(before, running, "agentfense_sandboxes", state="running", runtime="docker") == 1
    assert moved(before, after, "agentfense_sandboxes", state="running", runtime="docker") == 0
    assert moved(before, after, "agentfense_execs_total", kind="exec", outcome="exit_nonzero") == 1
    for event in ("sandbox created", "sandbox started", "sandbox stopped", "sandbox destroyed"):
        found = lines(ops_server, event, sandbox_id=sandbox, owner="team-d", runtime="docker")
        assert len(found) == 1, (event, ops_server.log())
    assert (
        "image=agentfense/busybox:latest"
        in lines(ops_server, "sandbox created", sandbox_id=sandbox)[0]
    )


async def test_a_scraper_in_a_tight_loop_gets_answers_paced(ops_server: ServerProcess) -> None:
    """Each answer holds the server's loop while it is built: at most one per 0.25 s."""
    answered = 0

    def hammer(until: float) -> None:
        nonlocal answered
        while time.monotonic() < until:
            if _get(ops_server)[0] == 200:
                answered += 1

    began = time.monotonic()
    until = began + 2.0
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(anyio.to_thread.run_sync, hammer, until)
        async with AsyncSandboxClient(ops_server.endpoint) as client:
            with anyio.fail_after(5):  # (the gRPC server answers meanwhile)
                codebase = await client.create_codebase("ops-paced")
                await client.delete_codebase(codebase.id)
    elapsed = time.monotonic() - began  # (the last answers came after `until`)
    assert 2 <= answered <= elapsed / 0.25 + 1


async def test_what_a_commit_could_not_move_is_committed_later(ops_server: ServerProcess) -> None:
    """A file whose path the codebase made a directory of meanwhile (an upload) cannot be
    committed and stays in the delta. The view is not clean then: once the directory is
    gone, the next command commits the file, even one that only reads."""
    async with AsyncSandboxClient(ops_server.endpoint) as client:
        codebase = await client.create_codebase("ops-stays")
        rules = [PermissionRule("**", Permission.WRITE)]
        agent = (await client.create_sandbox(codebase.id, permissions=rules, start=True)).id
        other = (await client.create_sandbox(codebase.id, permissions=rules, start=True)).id
        assert (await client.exec(agent, "mkfifo /tmp/gate")).exit_code == 0
        async with anyio.create_task_group() as tg:
            # Written, then held until the codebase has a directory at that path.
            tg.start_soon(client.exec, agent, "echo mine > conflict; cat /tmp/gate >/dev/null")
            with anyio.fail_after(10):
                while True:
                    with contextlib.suppress(SandboxError):
                        if await client.read_sandbox_file(agent, "conflict") == b"mine\n":
                            break
                    await anyio.sleep(0.05)
            await client.upload_file(codebase.id, "conflict/theirs.txt", b"theirs\n")
            assert (await client.exec(agent, "echo > /tmp/gate")).exit_code == 0
        listed = {f.path for f in await client.list_files(codebase.id, recursive=True)}
        assert listed == {"conflict", "conflict/theirs.txt"}  # (the file stayed in the delta)
        assert (await client.exec(other, "rm -r conflict")).exit_code == 0
        assert (await client.exec(agent, "cat conflict")).stdout == "mine\n"
        assert await client.download_file(codebase.id, "conflict") == b"mine\n"
        await client.destroy_sandbox(agent)
        await client.destroy_sandbox(other)
        await client.delete_codebase(codebase.id)
