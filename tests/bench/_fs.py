"""The permission filesystem's benchmarks: ``grep -r`` over many files, a sequential read,
creating files (and the commit that follows), and the server's memory per running sandbox.

A command's time is taken inside the sandbox (``date +%s%N`` around it, in one ``sh``), so the
exec round trip is not part of it; the host baseline runs the same ``sh`` wrapper in a
subprocess, on the codebase's own files. Both sides are measured warm: nothing drops the page
cache (a host-wide setting) and every measurement starts with untimed runs.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import subprocess
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    ExecResult,
    Permission,
    PermissionRule,
    get_preset,
)
from agentfense.runtimes.base import BASE_ENV
from agentfense.testing import ServerProcess

from ._timing import Step, interleaved

GREP_DIRS, GREP_FILES_PER_DIR = 50, 100
GREP_NEEDLE = "needle"
BIG_FILE = "big.bin"
BIG_SIZE = 256 * 2**20
CREATE_FILES = 1000
COMMIT_FILES = 10_000  # in 100 new directories
START_CONCURRENCY = 8  # sandboxes created/started/destroyed at once in the memory benchmark

# The host side runs with the sandbox's locale and PATH (grep is slower in a UTF-8 locale).
HOST_ENV = {"PATH": BASE_ENV["PATH"], "LANG": BASE_ENV["LANG"]}

Samples = tuple[list[float], list[float]]


# -- inputs -----------------------------------------------------------------------------------


def make_grep_tree(root: Path) -> Path:
    """5,000 text files of 1-4 KB, 100 to a directory; the first file of each holds the needle."""
    rng = random.Random(5000)
    words = ["alpha", "beta", "gamma", "delta", "return", "value", "import", "class", "def"]
    lines = (" ".join(rng.choices(words, k=rng.randint(2, 12))) for _ in range(8_000))
    corpus = "\n".join(lines).encode()  # about 330 KB of short lines
    for d in range(GREP_DIRS):
        directory = root / f"dir{d:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        for f in range(GREP_FILES_PER_DIR):
            size = rng.randint(1024, 4096)
            start = rng.randrange(len(corpus) - size)
            data = corpus[start : start + size]
            if f == 0:
                data = data[: size // 2] + f"\n{GREP_NEEDLE}\n".encode() + data[size // 2 :]
            (directory / f"file{f:03d}.txt").write_bytes(data)
    return root


def make_big_file(directory: Path) -> Path:
    """``directory`` holding one 256 MiB file (a random MiB, repeated)."""
    directory.mkdir(parents=True, exist_ok=True)
    block = random.Random(256).randbytes(2**20)
    with (directory / BIG_FILE).open("wb") as out:
        for _ in range(BIG_SIZE // len(block)):
            out.write(block)
    return directory


def codebase_files(state_dir: Path, codebase_id: str) -> Path:
    """The host directory of a codebase's files (what the sandbox's view shows as lower)."""
    files = state_dir / "codebases" / codebase_id / "files"
    if not files.is_dir():
        raise RuntimeError(f"no codebase directory at {files}")
    return files


# -- timing a command inside the sandbox and on the host --------------------------------------


def timed_script(command: str) -> str:
    """``sh`` that runs ``command`` and prints the nanoseconds it took (fails if it fails)."""
    return f"s=$(date +%s%N) && {{ {command}; }} && e=$(date +%s%N) && echo $((e - s))"


def _seconds(exit_code: int, stdout: str, stderr: str, command: str) -> float:
    if exit_code != 0:
        raise RuntimeError(f"{command!r} exited with {exit_code}: {stderr[-500:]!r}")
    return int(stdout.split()[-1]) / 1e9


def _in_sandbox_seconds(result: ExecResult, command: str) -> float:
    return _seconds(result.exit_code, result.stdout, result.stderr, command)


def in_sandbox(sandbox: AsyncSandbox, command: str) -> Step:
    """A step running ``command`` in the sandbox; it returns the seconds measured inside."""
    script = timed_script(command)

    async def step() -> float:
        return _in_sandbox_seconds(await sandbox.run(script), command)

    return step


def _run_on_host(command: str, cwd: Path) -> float:
    done = subprocess.run(
        ["/bin/sh", "-c", timed_script(command)],
        cwd=cwd,
        env=HOST_ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    return _seconds(done.returncode, done.stdout, done.stderr, command)


def on_host(command: str, cwd: Path) -> Step:
    """A step running ``command`` with ``sh`` on the host; it returns the seconds measured."""

    async def step() -> float:
        return _run_on_host(command, cwd)

    return step


# -- the measurements ------------------------------------------------------------------------


# A policy with every level in it: most files read, some view-only (grep is refused their
# content, silently), a writable area and hidden secrets.
VIEW_AND_WRITE = [
    PermissionRule("**", Permission.READ),
    PermissionRule("**/file099.txt", Permission.VIEW),
    PermissionRule("out/**", Permission.WRITE),
    PermissionRule("**/.env*", Permission.NONE, priority=100),
]
POLICIES: dict[str, tuple[str | None, list[PermissionRule] | None]] = {
    "read-only": ("read-only", None),
    "agent-safe": ("agent-safe", None),
    "view+write": (None, VIEW_AND_WRITE),
}
GREP = f"grep -rs {GREP_NEEDLE} {{}} > /dev/null; test $? -le 2"  # 2: refused files


def _open(tree: Path, endpoint: str, policy: str) -> Awaitable[AsyncSandbox]:
    preset, permissions = POLICIES[policy]
    return AsyncSandbox.from_local(tree, preset=preset, permissions=permissions, endpoint=endpoint)


async def grep(
    endpoint: str, state_dir: Path, tree: Path, n: int, warmup: int, policy: str = "read-only"
) -> Samples:
    """``grep -r`` over the tree: in a sandbox (``read-only``: the codebase bound read-only;
    the others through the permission filesystem) vs on the codebase's files."""
    async with await _open(tree, endpoint, policy) as sandbox:
        files = codebase_files(state_dir, sandbox.codebase_id)
        return await interleaved(
            in_sandbox(sandbox, GREP.format("/workspace")),
            on_host(GREP.format(shlex.quote(str(files))), files),
            n_ours=n,
            n_base=n,
            warmup=warmup,
            blocks=5,
            self_timed=True,
        )


async def first_grep(endpoint: str, state_dir: Path, tree: Path, n: int) -> Samples:
    """The first ``grep -r`` in a new ``agent-safe`` sandbox (nothing of its view is in the
    kernel's caches yet; the host's page cache is warm) vs ``grep -r`` on the host."""
    ours: list[float] = []
    host: list[float] = []
    async with await _open(tree, endpoint, "agent-safe") as first:
        files = codebase_files(state_dir, first.codebase_id)
        command = GREP.format("/workspace")
        await first.run(GREP.format("/workspace"))  # the host's page cache: warm
        for _ in range(n):
            async with await AsyncSandbox.from_codebase(
                first.codebase_id, preset="agent-safe", endpoint=endpoint
            ) as sandbox:
                ours.append(_in_sandbox_seconds(await sandbox.run(timed_script(command)), command))
            host.append(_run_on_host(GREP.format(shlex.quote(str(files))), files))
    return ours, host


async def sequential_read(
    endpoint: str, state_dir: Path, directory: Path, n: int, warmup: int, policy: str = "read-only"
) -> Samples:
    """``dd bs=1M`` of a 256 MiB file to /dev/null: in a read-only sandbox vs on the host.

    The file is made here and removed after (with its codebase): half a GiB of dirty pages
    being written back slows down whatever else writes to the disk meanwhile.
    """
    await anyio.to_thread.run_sync(make_big_file, directory)
    try:
        async with await _open(directory, endpoint, policy) as sandbox:
            files = codebase_files(state_dir, sandbox.codebase_id)
            read = "dd if={} of=/dev/null bs=1M status=none"
            return await interleaved(
                in_sandbox(sandbox, read.format(f"/workspace/{BIG_FILE}")),
                on_host(read.format(shlex.quote(str(files / BIG_FILE))), files),
                n_ours=n,
                n_base=n,
                warmup=warmup,
                blocks=5,
                self_timed=True,
            )
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, directory)


@dataclass
class CreateSamples:
    """Per iteration: the creation's time inside the sandbox and on the host; the exec's round
    trip minus the time inside (the exec's own cost, and the commit); ``true`` with nothing
    pending (just before), and ``true`` right after the creation's exec."""

    inside: list[float] = field(default_factory=list)
    host: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)
    true_idle: list[float] = field(default_factory=list)
    true_after: list[float] = field(default_factory=list)


def create_command(directory: str) -> str:
    return (
        f"mkdir {directory} && cd {directory} && "
        f"for i in $(seq {CREATE_FILES}); do echo x > f$i; done"
    )


async def _round_trip(sandbox: AsyncSandbox, command: str) -> tuple[ExecResult, float]:
    started = time.perf_counter()
    result = await sandbox.run(command)
    if result.exit_code != 0:
        raise RuntimeError(f"{command!r} exited with {result.exit_code}: {result.stderr!r}")
    return result, time.perf_counter() - started


def _host_scratch(state_dir: Path) -> Path:
    """A host directory in the server's state directory, on the same file system as the deltas
    the sandbox's new files go to."""
    scratch = state_dir / "bench-host-create"
    scratch.mkdir()
    return scratch


async def create_files(endpoint: str, state_dir: Path, project: Path, n: int) -> CreateSamples:
    """1,000 ``echo x > f$i`` in a new directory: in a ``write`` sandbox vs in a host directory.

    Each iteration creates a directory of its own (the first iteration is a warm-up). Nothing is
    deleted, here or before: on an ext4 without a journal (as on this VM), allocating an inode
    skips, one by one, every inode of its block group deleted in the last minute or more, so a
    file creation after thousands of deletions costs up to a millisecond, on either side. Hence
    this runs first of all, and its codebase (and the host directory) stay until the server's
    state directory is removed at the end of the run.
    """
    samples = CreateSamples()
    host_dir = await anyio.to_thread.run_sync(_host_scratch, state_dir)
    async with AsyncSandboxClient(endpoint) as client:
        codebase = await client.create_codebase("bench-create")
        for rel in await anyio.to_thread.run_sync(_files_of, project):
            await client.upload_local_file(codebase.id, rel, project / rel)
    async with await AsyncSandbox.from_codebase(
        codebase.id, preset="full-access", endpoint=endpoint
    ) as sandbox:
        for index in range(n + 1):
            command = create_command(f"run{index}")
            _, idle = await _round_trip(sandbox, "true")
            result, round_trip = await _round_trip(sandbox, timed_script(command))
            inside = _in_sandbox_seconds(result, command)
            _, after = await _round_trip(sandbox, "true")
            host = _run_on_host(command, host_dir)
            if index == 0:
                continue
            samples.inside.append(inside)
            samples.host.append(host)
            samples.overhead.append(round_trip - inside)
            samples.true_idle.append(idle)
            samples.true_after.append(after)
    return samples


@dataclass
class CommitSamples:
    """Per iteration: the exec's round trip minus the time inside, for a command that made
    COMMIT_FILES files, and ``run("true")``'s round trip just before (nothing to commit)."""

    overhead: list[float] = field(default_factory=list)
    true_idle: list[float] = field(default_factory=list)
    inside: list[float] = field(default_factory=list)


def commit_command(directory: str) -> str:
    per = COMMIT_FILES // 100
    return (
        f"mkdir {directory} && cd {directory} && for d in $(seq 100); do mkdir d$d && "
        f"for f in $(seq {per}); do : > d$d/f$f; done; done"
    )


async def commit_many(endpoint: str, project: Path, n: int) -> CommitSamples:
    """The commit of COMMIT_FILES new files (a write sandbox; the first iteration warms up)."""
    samples = CommitSamples()
    async with AsyncSandboxClient(endpoint) as client:
        codebase = await client.create_codebase("bench-commit")
        for rel in await anyio.to_thread.run_sync(_files_of, project):
            await client.upload_local_file(codebase.id, rel, project / rel)
    async with await AsyncSandbox.from_codebase(
        codebase.id, preset="full-access", endpoint=endpoint
    ) as sandbox:
        for index in range(n + 1):
            command = commit_command(f"commit{index}")
            _, idle = await _round_trip(sandbox, "true")
            result, round_trip = await _round_trip(sandbox, timed_script(command))
            inside = _in_sandbox_seconds(result, command)
            if index:
                samples.overhead.append(round_trip - inside)
                samples.true_idle.append(idle)
                samples.inside.append(inside)
    return samples


def _files_of(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())


# -- memory -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident memory (bytes) of the server, of its fs process, and of the rest of its process
    tree: the sandboxes' processes (bwrap and the agent), with their proportional share."""

    server: int
    fs: int
    sandboxes: int
    sandboxes_pss: int
    sandbox_processes: int


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{name}/stat") as stat:
                ppid = int(stat.read().rpartition(")")[2].split()[1])
            tree.setdefault(ppid, []).append(int(name))
    return tree


def _descendants(pid: int, tree: dict[int, list[int]]) -> Iterator[int]:
    for child in tree.get(pid, []):
        yield child
        yield from _descendants(child, tree)


def _kib_field(path: str, name: str) -> int:
    """A ``Name:  123 kB`` field of a /proc file, in bytes (0 when the process is gone)."""
    with contextlib.suppress(OSError), open(path) as lines:
        for line in lines:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read()
    return b""


def memory_of(server_pid: int) -> Memory:
    """VmRSS of the server, of its ``agentfense.fs`` child, and of every other descendant."""
    tree = _children()
    fs_pids = [pid for pid in tree.get(server_pid, []) if b"agentfense.fs" in _cmdline(pid)]
    fs_tree = {*fs_pids, *(d for pid in fs_pids for d in _descendants(pid, tree))}
    others = [pid for pid in _descendants(server_pid, tree) if pid not in fs_tree]
    return Memory(
        server=_kib_field(f"/proc/{server_pid}/status", "VmRSS"),
        fs=sum(_kib_field(f"/proc/{pid}/status", "VmRSS") for pid in fs_tree),
        sandboxes=sum(_kib_field(f"/proc/{pid}/status", "VmRSS") for pid in others),
        sandboxes_pss=sum(_kib_field(f"/proc/{pid}/smaps_rollup", "Pss") for pid in others),
        sandbox_processes=len(others),
    )


@dataclass(frozen=True, slots=True)
class MemoryResult:
    count: int
    before: Memory  # one sandbox started and destroyed (one-off costs paid), none running
    after: Memory  # ``count`` sandboxes running, each having run one command
    destroyed: Memory  # after destroying them


async def _settled(server_pid: int) -> Memory:
    await anyio.sleep(1.0)  # releases, reaped processes
    return memory_of(server_pid)


async def memory(server: ServerProcess, project: Path, count: int) -> MemoryResult:
    """The memory of a dedicated server before and with ``count`` agent-safe sandboxes running
    (each view served by the permission filesystem)."""
    rules = get_preset("agent-safe")
    pid = server.process.pid
    limiter = anyio.CapacityLimiter(START_CONCURRENCY)
    async with AsyncSandboxClient(server.endpoint) as client:
        codebase = await client.create_codebase("memory")
        for rel in await anyio.to_thread.run_sync(_files_of, project):
            await client.upload_local_file(codebase.id, rel, project / rel)

        async def start(ids: list[str]) -> None:
            async with limiter:
                info = await client.create_sandbox(codebase.id, permissions=rules)
                ids.append(info.id)
                await client.start_sandbox(info.id)
                result = await client.exec(info.id, "true")
                if result.exit_code != 0:
                    raise RuntimeError(f"'true' exited with {result.exit_code}: {result.stderr!r}")

        async def destroy(sandbox_id: str) -> None:
            async with limiter:
                await client.destroy_sandbox(sandbox_id)

        warm: list[str] = []
        await start(warm)
        await destroy(warm[0])
        before = await _settled(pid)
        ids: list[str] = []
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(start, ids)
            after = await _settled(pid)
        finally:
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as tg:
                    for sandbox_id in ids:
                        tg.start_soon(destroy, sandbox_id)
        destroyed = await _settled(pid)
        await client.delete_codebase(codebase.id)
    return MemoryResult(count, before, after, destroyed)
