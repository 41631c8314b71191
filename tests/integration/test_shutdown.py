"""The server shuts down gracefully on SIGTERM and SIGINT, and leaves nothing behind on SIGKILL.

Each test runs its own server (``agentfense.testing.start_server_process``) and looks at the
host afterwards: its processes in ``/proc``, its cgroups, its socket.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from agentfense import AsyncSandboxClient, SandboxError, SandboxStatus
from agentfense.runtimes._cgroup import find_cgroup2_root, sweep_dead
from agentfense.testing import ServerProcess, start_server_process

from ._procs import host_pids_running

pytestmark = pytest.mark.anyio

WRITE = [{"pattern": "**", "permission": "write"}]


def _cgroup_of(sandbox_id: str) -> Path | None:
    """The cgroup of the sandbox's run (``<sandbox>.<run>``); a path that is not, without."""
    root = find_cgroup2_root() if os.geteuid() == 0 else None
    if root is None:
        return None
    found = sorted((root / "agentfense").glob(f"{sandbox_id}.*"))
    return found[0] if found else root / "agentfense" / sandbox_id


@dataclass
class Running:
    """A sandbox of the test's server with processes in it that the host can recognise."""

    sandbox_id: str
    workspace: bytes  # on the command line of its bwrap
    background: bytes  # ``sleep <unique>`` started in the background
    foreground: bytes  # ``sleep <unique>`` running as a command while the server goes


async def _start(tmp_path: Path) -> ServerProcess:
    return await anyio.to_thread.run_sync(start_server_process, tmp_path)


async def _poll_until_gone(needles: list[bytes], seconds: float) -> dict[bytes, list[int]]:
    """Wait until no host process matches any of ``needles``; what still matches if not."""
    left: dict[bytes, list[int]] = {}
    with anyio.move_on_after(seconds):
        while True:
            left = {n: pids for n in needles if (pids := host_pids_running(n))}
            if not left:
                break
            await anyio.sleep(0.05)
    return left


@asynccontextmanager
async def _busy_server(
    tmp_path: Path, sandboxes: int = 2
) -> AsyncIterator[tuple[ServerProcess, AsyncSandboxClient, list[Running]]]:
    """A server with running sandboxes, each with a background and a foreground process."""
    server = await _start(tmp_path)
    try:
        async with AsyncSandboxClient(server.endpoint) as client, anyio.create_task_group() as tg:
            running: list[Running] = []
            for _ in range(sandboxes):
                codebase = await client.create_codebase("shutdown")
                await client.upload_file(codebase.id, "a.txt", b"a")
                info = await client.create_sandbox(codebase.id, permissions=WRITE)
                assert (await client.start_sandbox(info.id)).status is SandboxStatus.RUNNING
                unique = uuid.uuid4().int % 10**9
                entry = Running(
                    sandbox_id=info.id,
                    workspace=f"{server.state_dir}/fs/views/{info.id}\0".encode(),
                    background=f"sleep\x001000.{unique}1\0".encode(),
                    foreground=f"sleep\x001000.{unique}2\0".encode(),
                )
                result = await client.exec(
                    info.id, f"sleep 1000.{unique}1 >/dev/null 2>&1 &", timeout=30
                )
                assert result.exit_code == 0
                tg.start_soon(_exec_until_the_server_goes, client, info.id, f"sleep 1000.{unique}2")
                running.append(entry)
            with anyio.fail_after(10):
                while True:
                    if all(
                        host_pids_running(r.foreground) and host_pids_running(r.background)
                        for r in running
                    ):
                        break
                    await anyio.sleep(0.02)
            for entry in running:
                # (no bwrap stays once a sandbox has started: the server holds its namespaces)
                assert host_pids_running(entry.workspace) == []
                cgroup = _cgroup_of(entry.sandbox_id)
                assert cgroup is None or cgroup.is_dir()
            yield server, client, running
    finally:
        await anyio.to_thread.run_sync(server.stop)


async def _exec_until_the_server_goes(
    client: AsyncSandboxClient, sandbox_id: str, command: str
) -> None:
    """A command in flight when the server shuts down: it must end, one way or another."""
    try:
        result = await client.exec(sandbox_id, command)
    except SandboxError:
        return  # the connection went with the server
    assert result.exit_code != 0  # killed, never reported as a success


def _assert_nothing_left(server: ServerProcess, running: list[Running]) -> None:
    for entry in running:
        for needle in (entry.workspace, entry.background, entry.foreground):
            assert host_pids_running(needle) == [], needle
        cgroup = _cgroup_of(entry.sandbox_id)
        assert cgroup is None or not cgroup.exists(), cgroup
    assert not server.socket_path.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_graceful_shutdown_stops_every_sandbox(
    tmp_path: Path, signum: signal.Signals
) -> None:
    async with _busy_server(tmp_path) as (server, _client, running):
        server.process.send_signal(signum)
        with anyio.fail_after(30):
            code = await anyio.to_thread.run_sync(server.process.wait)
        assert code == 0, server.log()
        # Stopped before the server exited: nothing to wait for.
        _assert_nothing_left(server, running)
        assert f"received {signum.name}, shutting down" in server.log()
        assert "Traceback" not in server.log()


async def test_stop_helper_sends_sigterm_and_reports_exit_code_0(tmp_path: Path) -> None:
    async with _busy_server(tmp_path, sandboxes=1) as (server, _client, running):
        with anyio.fail_after(30):
            code = await anyio.to_thread.run_sync(server.stop)
        assert code == 0, server.log()
        _assert_nothing_left(server, running)


def test_sigterm_right_after_start_still_shuts_down_gracefully(tmp_path: Path) -> None:
    for attempt in range(3):
        server = start_server_process(tmp_path / f"quick-{attempt}")
        assert server.stop() == 0, server.log()
        assert not server.state_dir.exists()


async def test_sigkill_leaves_no_sandbox_process_behind(tmp_path: Path) -> None:
    async with _busy_server(tmp_path) as (server, _client, running):
        server.process.kill()
        with anyio.fail_after(10):
            assert await anyio.to_thread.run_sync(server.process.wait) == -signal.SIGKILL
        # The namespaces were the server's fds; every launcher, init and guard has SIGKILL as
        # its parent-death signal: the kernel kills the sandboxes' processes with the server.
        needles = [n for r in running for n in (r.workspace, r.background, r.foreground)]
        assert await _poll_until_gone(needles, 5) == {}
        # Nobody removed their cgroups (a later server does not know them): they are empty,
        # once the killed processes (an init, a guard, outside the needles) have exited.
        for entry in running:
            cgroup = _cgroup_of(entry.sandbox_id)
            if cgroup is not None:
                for leaf in sorted(p for p in cgroup.iterdir() if p.is_dir()):  # cmd-*, init-*
                    members = (leaf / "cgroup.procs").read_text()
                    for _ in range(100):
                        if not members:
                            break
                        await anyio.sleep(0.05)
                        members = (leaf / "cgroup.procs").read_text()
                    assert members == ""
                    leaf.rmdir()
                cgroup.rmdir()

    # A new server on the same state directory starts cleanly and still has the codebases.
    restarted = await _start(tmp_path)
    try:
        async with AsyncSandboxClient(restarted.endpoint) as client:
            assert len(await client.list_codebases()) == len(running)
            assert await client.list_sandboxes() == []
        # The killed server's permission filesystem went with it (it exits when its server
        # does), and the new server removed the views' dead mounts.
        mounts = await anyio.Path("/proc/self/mounts").read_text()
        assert f" {restarted.state_dir}/fs/views/" not in mounts
    finally:
        assert await anyio.to_thread.run_sync(restarted.stop) == 0, restarted.log()


def test_the_cgroups_of_dead_sandboxes_are_swept(tmp_path: Path) -> None:
    root = find_cgroup2_root()
    assert root is not None
    dead = root / "agentfense" / f"sb_{uuid.uuid4().hex[:16]}"
    (dead / "agent").mkdir(parents=True)
    (dead / "cmd-1").mkdir()
    live = root / "agentfense" / f"sb_{uuid.uuid4().hex[:16]}"
    (live / "cmd-1").mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (live / "cmd-1" / "cgroup.procs").write_text(str(sleeper.pid))
        # Both older than the sweep's bound (not older_than=0: that would remove every empty
        # sandbox cgroup of the host, a fresh one another server is setting up among them).
        hour_ago = time.time() - 3600
        for cgroup in (dead, live):
            os.utime(cgroup, (hour_ago, hour_ago))
        assert sweep_dead(root) >= 1
        assert not dead.exists()
        assert live.exists()  # a process is in it
    finally:
        sleeper.kill()
        sleeper.wait()
        for leaf in (live / "cmd-1", live):
            for _ in range(100):
                with suppress(OSError):
                    leaf.rmdir()
                    break
                time.sleep(0.01)


def test_a_killed_servers_sandboxes_cgroups_are_swept_at_once(tmp_path: Path) -> None:
    """Named as dead (their deltas were left by this server's killed predecessor), a
    sandbox's cgroups go however young, in the command and the limit hierarchies, with
    whatever still runs in them; another sandbox's young empty cgroup stays."""
    root = find_cgroup2_root()
    assert root is not None
    name = f"sb_{uuid.uuid4().hex[:16]}"
    dead = root / "agentfense" / f"{name}.run1"  # (a cgroup named for one run of it)
    (dead / "cmd-1").mkdir(parents=True)
    limits = [Path(f"/sys/fs/cgroup/{c}") / "agentfense" / name for c in ("memory", "pids")]
    limits = [p for p in limits if p.parent.parent.is_dir()]
    for limit in limits:
        limit.mkdir(parents=True)
    young = root / "agentfense" / f"sb_{uuid.uuid4().hex[:16]}"
    young.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (dead / "cmd-1" / "cgroup.procs").write_text(str(sleeper.pid))
        for limit in limits:
            (limit / "cgroup.procs").write_text(str(sleeper.pid))
        assert sweep_dead(root, dead=[name], roots=[p.parent.parent for p in limits]) == 1 + len(
            limits
        )
        assert sleeper.wait(5) == -signal.SIGKILL
        assert not dead.exists()
        assert not any(limit.exists() for limit in limits)
        assert young.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        young.rmdir()
