"""The waiting launcher (runtimes/_waiting_launcher.py) and ``Runtime.prepare`` when the
server runs short of file descriptors: whatever a create or a first command began is let
go, nothing is kept (no fd on a limit cgroup, no launcher waiting for a sandbox that is
gone). The server's limit is lowered, one step at a time, to just above what it uses, so
that each step fails somewhere else along the way."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandboxClient, SandboxError
from agentfense.errors import ResourceLimitExceededError
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio
_PIDS = Path("/sys/fs/cgroup/pids/agentfense")
_MOUNTS = Path("/proc/self/mounts")


@pytest.fixture(autouse=True)
def _limits_on_cgroup_v1() -> None:
    if not _PIDS.parent.is_dir():
        pytest.skip("the waiting launcher is made on cgroup v1 hosts, and this one has none")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server_process(tmp_path / "server")
    yield running
    running.stop()


def _fds(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


def _children(pid: int) -> dict[int, list[str]]:
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            found[int(child)] = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
    return found


def _sandbox_cgroups() -> set[Path]:
    return {
        path
        for hierarchy in ("pids", "memory", "cpu", "unified")
        for path in Path(f"/sys/fs/cgroup/{hierarchy}/agentfense").glob("sb_*")
    }


def _left(cgroup: Path) -> bool:
    """Whether ``cgroup`` is left over: no process in it, and no server holding it (a
    shared flock on its unified directory: ``_cgroup.hold``)."""
    try:
        if cgroup.joinpath("cgroup.procs").read_text().split():
            return False
        unified = Path("/sys/fs/cgroup/unified/agentfense", cgroup.name)
        inode = os.stat(unified).st_ino if unified.exists() else None
    except OSError:
        return False
    locks = Path("/proc/locks").read_text()
    return inode is None or f":{inode} " not in locks


def _mounts_under(directory: Path) -> list[str]:
    return [line.split()[1] for line in _MOUNTS.read_text().splitlines() if str(directory) in line]


def _exists(pid: int) -> bool:
    """Whether ``pid`` is there still, running or unreaped."""
    return os.path.exists(f"/proc/{pid}")


@contextlib.contextmanager
def _descriptors_at(pid: int, extra: int) -> Iterator[None]:
    """The server's soft limit on descriptors such that ``extra`` more can be opened (the
    kernel gives the lowest free number, which must be below the limit)."""
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    free = sorted(set(range(max(used) + extra + 2)) - used)
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (free[extra], hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


async def test_creates_short_of_descriptors_keep_no_limit_cgroup_open(
    server: ServerProcess,
) -> None:
    """``prepare`` opens the limit cgroups, then makes the waiting launcher's leaves and its
    socket: a socketpair refused (EMFILE) once left the limit cgroups made, and the
    server's write fd on each (one more descriptor gone for good on every create). And
    ``prepare`` ran before the start's check of the server's descriptors (``check_headroom``):
    with none left, removing what it had begun failed too (listing a cgroup takes one),
    which left the sandbox's cgroup behind."""
    pid = server.process.pid
    before = _sandbox_cgroups()
    async with AsyncSandboxClient(server.endpoint) as client:
        codebase = await client.create_codebase("short-of-fds")
        # (the first start finds the launcher: until then there is nothing to prepare)
        await client.destroy_sandbox((await client.create_sandbox(codebase.id, start=True)).id)
        for extra in range(16):
            # (refused as out of descriptors, with a sentence: never a failure of the server)
            with _descriptors_at(pid, extra), contextlib.suppress(ResourceLimitExceededError):
                await client.create_sandbox(codebase.id, start=True)
            for info in await client.list_sandboxes(codebase.id):
                await client.destroy_sandbox(info.id)
        held: list[str] = []
        left: list[str] = []
        for _ in range(100):  # (a released one's cgroups go once its launcher has ended)
            held = [path for path in _fds(pid) if path.startswith("/sys/fs/cgroup/")]
            # (no cgroup of its left behind: another server's live ones hold theirs)
            left = sorted(str(path) for path in _sandbox_cgroups() - before if _left(path))
            if not held and not left:
                break
            await anyio.sleep(0.05)
        assert (held, left) == ([], [])
        # Nor a view's mount (the mapping of its generation takes a descriptor of its own:
        # refused, it once left the view mounted, and the mount's descriptor open).
        assert _mounts_under(server.state_dir) == []


async def test_a_first_command_refused_short_of_descriptors_lets_the_launcher_go(
    server: ServerProcess,
) -> None:
    """A first command that fails before its request is sent (a pipe refused) let its
    waiting launcher wait on, unreaped, for a sandbox destroyed meanwhile."""
    pid = server.process.pid
    async with AsyncSandboxClient(server.endpoint) as client:
        codebase = await client.create_codebase("first-short-of-fds")
        await client.destroy_sandbox((await client.create_sandbox(codebase.id, start=True)).id)
        pipes = sorted(path for path in _fds(pid) if path.startswith("pipe:"))
        refused = 0
        for extra in range(16):
            info = await client.create_sandbox(codebase.id, start=True)
            waiting: list[int] = []
            for _ in range(50):
                waiting = [p for p, a in _children(pid).items() if a[:2] == ["init", "wait"]]
                if waiting:
                    break
                await anyio.sleep(0.01)
            (launcher,) = waiting
            with _descriptors_at(pid, extra):
                try:
                    await client.exec(info.id, "true")
                except SandboxError:
                    refused += 1
                    failed = True
                else:
                    failed = False
            await client.destroy_sandbox(info.id)
            if failed:
                # Well within WAIT_FOR (1 s) of its start. Its reap may begin short of
                # descriptors too, and then polls: in CI one was a zombie for good.
                for _ in range(60):
                    if not _exists(launcher):
                        break
                    await anyio.sleep(0.01)
                assert not _exists(launcher), _children(pid)
        assert refused > 0  # (some steps were short enough)
        # No pipe of a refused command kept (one refused after the first of its four was
        # made kept those made before it).
        # (the pool's builds hold a pipe or two for a moment: as many as before, at most)
        now: list[str] = []
        for _ in range(100):
            now = [path for path in _fds(pid) if path.startswith("pipe:")]
            if len(now) <= len(pipes):
                break
            await anyio.sleep(0.02)
        assert len(now) <= len(pipes), now
