"""One sandbox's worst behaviour costs only that sandbox (real server, bwrap and FUSE).

Each case runs an attack in one sandbox while a victim sandbox, on a codebase of its own,
runs commands that go through its view every time (a read, a lookup of a name never seen, a
write and its commit) and times each one. Throughout, the victim never waits more than a
second and never leaves RUNNING; the attacker gets an error or a limit; the permission
filesystem process is the same one before and after (nothing crashed or restarted it).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    ExecResult,
    Permission,
    PermissionRule,
    SandboxStatus,
)
from agentfense.testing import ServerProcess, start_server_process

from ._procs import host_processes

pytestmark = pytest.mark.anyio

WORST = 1.0  # seconds: the most one of the victim's commands may take


def _fs_pid(server: ServerProcess) -> int:
    found = [
        pid
        for pid, cmdline in host_processes("agentfense.fs").items()
        if _parent(pid) == server.process.pid and "-m agentfense.fs" in cmdline
    ]
    assert len(found) == 1, found
    return found[0]


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[1])


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Victim:
    sandbox: AsyncSandbox
    times: list[float] = field(default_factory=list)

    async def probe(self, index: int) -> None:
        commands = (
            "cat README.md",
            f"ls /workspace/never-seen-{index} 2>/dev/null; echo {index} > output/probe",
            "true",
        )
        for command in commands:
            started = time.monotonic()
            result = await self.sandbox.run(command, timeout=60)
            self.times.append(time.monotonic() - started)
            assert result.exit_code in (0, 2), (command, result.stderr)
        assert (await self.sandbox.refresh()).status is SandboxStatus.RUNNING

    async def probe_until(self, done: anyio.Event) -> None:
        index = 0
        while not done.is_set():
            index += 1
            await self.probe(index)
            await anyio.sleep(0.02)


@dataclass
class Ring:
    server: ServerProcess
    project: Path
    victim: Victim

    async def attacker(
        self, *, preset: str = "development", permissions: list[PermissionRule] | None = None
    ) -> AsyncSandbox:
        return await AsyncSandbox.from_local(
            self.project,
            preset=preset,
            permissions=permissions,
            endpoint=self.server.endpoint,
        )

    async def during(self, attack: Callable[[], Awaitable[None]]) -> None:
        """Run ``attack`` while the victim probes; then check the victim and the fs process."""
        fs_before = _fs_pid(self.server)
        self.victim.times.clear()
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.victim.probe_until, done)
            try:
                await attack()
            finally:
                done.set()
        await self.victim.probe(0)  # and after it
        assert self.victim.times, "the victim ran nothing"
        assert max(self.victim.times) < WORST, sorted(self.victim.times)[-5:]
        assert _fs_pid(self.server) == fs_before, "the permission filesystem was replaced"
        assert "Traceback" not in (self.server.state_dir / "logs" / "fs.log").read_text()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def ring(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Ring]:
    base = tmp_path_factory.mktemp("hostile")
    server = await anyio.to_thread.run_sync(start_server_process, base / "server")
    project = base / "project"
    (project / "output").mkdir(parents=True)
    (project / "README.md").write_text("victim\n")
    try:
        async with await AsyncSandbox.from_local(
            project, preset="agent-safe", endpoint=server.endpoint
        ) as sandbox:
            yield Ring(server, project, Victim(sandbox))
    finally:
        assert await anyio.to_thread.run_sync(server.stop) == 0, server.log()


async def _run(sandbox: AsyncSandbox, command: str) -> ExecResult:
    return await sandbox.run(command, timeout=300)


def _python(script: str) -> str:
    return f"cd /workspace && python3 -c {shlex.quote(script)}"


DEEP_CHAIN = """
import os
depth = 0
try:
    while True:
        os.mkdir("a")
        os.chdir("a")
        depth += 1
except OSError as exc:
    print(depth, exc.errno)
"""


async def test_a_chain_deeper_than_any_recursion_limit(ring: Ring) -> None:
    """1: thousands of nested directories (once the commit recursed per level)."""
    async with await ring.attacker() as attacker:

        async def attack() -> None:
            made = await _run(attacker, _python(DEEP_CHAIN))
            depth, code = map(int, made.stdout.split())
            assert depth > 2000  # deeper than Python's recursion limit, and committed
            assert code == 36  # ENAMETOOLONG: the path would be longer than PATH_MAX
            counted = await _run(attacker, "find /workspace/a | wc -l")
            assert int(counted.stdout) == depth
            removed = await _run(attacker, "rm -rf /workspace/a && ls /workspace")
            assert removed.exit_code == 0, removed.stderr

        await ring.during(attack)


async def test_removing_a_tree_whose_hidden_entries_stay(ring: Ring, tmp_path: Path) -> None:
    """2: ``rm -rf`` of thousands of directories each keeping a hidden ``.env.example``
    (once the commit's reply outgrew a datagram and the fs process died)."""
    tree = tmp_path / "tree"
    for index in range(3000):
        (tree / f"d{index}").mkdir(parents=True)
        (tree / f"d{index}" / ".env.example").write_text("SECRET=1\n")
        (tree / f"d{index}" / "code.py").write_text("x = 1\n")
    async with await AsyncSandbox.from_local(
        tree, preset="development", endpoint=ring.server.endpoint
    ) as attacker:

        async def attack() -> None:
            removed = await _run(attacker, "rm -rf /workspace/* && ls -A /workspace | wc -l")
            assert (removed.exit_code, removed.stdout) == (0, "0\n"), removed.stderr

        await ring.during(attack)
        kept = await attacker.client.list_files(attacker.codebase_id, recursive=True)
        assert sum(f.name == ".env.example" for f in kept) == 3000
        assert not any(f.name == "code.py" for f in kept)


async def test_a_rule_built_to_backtrack(ring: Ring) -> None:
    """3: a rule that costs a backtracking regex hours on a path 45 levels deep."""
    hostile = PermissionRule(
        "**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/b", Permission.NONE, priority=200
    )
    async with await ring.attacker(permissions=[hostile]) as attacker:
        deep = "/".join(["a"] * 45)

        async def attack() -> None:
            made = await _run(attacker, f"mkdir -p {deep}/c && find a | wc -l")
            assert made.stdout == f"{45 + 1}\n", made.stderr
            hidden = await _run(attacker, f"mkdir {deep}/b")  # the rule hides this name
            assert "Permission denied" in hidden.stderr
            listed = await _run(attacker, "ls -R /workspace > /dev/null && ls " + deep)
            assert listed.stdout == "c\n"

        await ring.during(attack)


async def test_fifty_thousand_directories_and_a_large_append(ring: Ring) -> None:
    """4: 50,000 empty directories in one command (0 bytes), then one byte appended to a
    256 MiB file (a copy of it all): heavy work, all of it the attacker's own."""
    async with await ring.attacker() as attacker:

        async def attack() -> None:
            made = await _run(
                attacker,
                _python("import os\nfor i in range(50000):\n    os.mkdir(f'd{i}')\nprint('ok')"),
            )
            assert made.stdout == "ok\n", made.stderr
            assert (await _run(attacker, "ls | wc -l")).stdout.strip() == "50001"
            big = await _run(attacker, "head -c 256M /dev/zero > big && echo x >> big")
            assert big.exit_code == 0, big.stderr
            size = await _run(attacker, "stat -c %s big")
            assert size.stdout == f"{256 * 2**20 + 2}\n"

        await ring.during(attack)


async def test_many_files_and_many_open_directories(ring: Ring) -> None:
    """5: 20,000 files and 100 directory descriptors open at once, read slowly: listings are
    streamed, so the fs process's memory does not grow with them."""
    async with await ring.attacker() as attacker:
        made = await _run(
            attacker,
            _python("import os\nos.mkdir('m')\nfor i in range(20000):\n    open(f'm/f{i}', 'w')"),
        )
        assert made.exit_code == 0, made.stderr
        fs = _fs_pid(ring.server)
        before = _rss(fs)
        peak = 0

        async def watch(done: anyio.Event) -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss(fs))
                await anyio.sleep(0.05)

        async def attack() -> None:
            done = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch, done)
                held = await _run(
                    attacker,
                    _python(
                        "import os, time\n"
                        "its = [os.scandir('m') for _ in range(100)]\n"
                        "for i, it in enumerate(its):\n"
                        "    for _ in range(i * 150):\n"
                        "        next(it)\n"
                        "time.sleep(1)\n"
                        "print(sum(1 for _ in its[0]))"
                    ),
                )
                done.set()
            assert held.stdout == "20000\n", held.stderr

        await ring.during(attack)
        # Nodes for the 20,000 names it listed, and nothing per open directory.
        assert peak - before < 48 * 2**20, (before, peak)


async def test_a_rename_past_path_max(ring: Ring) -> None:
    """6: a rename that would push the paths below it past PATH_MAX (once every later
    commit failed, and the sandbox could neither run anything nor be destroyed)."""
    async with await ring.attacker() as attacker:

        async def attack() -> None:
            made = await _run(attacker, _python(DEEP_CHAIN))
            assert int(made.stdout.split()[1]) == 36
            moved = await _run(attacker, "mv a " + "b" * 200)
            assert moved.exit_code != 0
            assert "File name too long" in moved.stderr
            after = await _run(attacker, "mv a c && echo fine > c/ok && cat c/ok")
            assert after.stdout == "fine\n", after.stderr

        await ring.during(attack)
    # (Leaving the context destroyed the attacker: it can be.)


FLOOD = """
import os, random, time
end = time.monotonic() + 3
n = 0
while time.monotonic() < end:
    try:
        os.stat(f"/workspace/nothing-{random.random()}")
    except FileNotFoundError:
        n += 1
print(n)
"""


async def test_a_flood_of_requests_from_eight_processes(ring: Ring) -> None:
    """7 (ours): eight processes asking for names that do not exist as fast as they can
    (none of it cacheable), for three seconds: the attacker's connection and thread are
    busy, the victim's are its own."""
    async with await ring.attacker() as attacker:
        script = shlex.quote(FLOOD)
        command = f"for i in 1 2 3 4 5 6 7 8; do python3 -c {script} & done; wait"

        async def attack() -> None:
            flooded = await _run(attacker, command)
            counts = [int(n) for n in flooded.stdout.split()]
            assert len(counts) == 8
            # it did flood (~10,000 on a quiet machine, fewer under load)
            assert sum(counts) > 2_000

        await ring.during(attack)
