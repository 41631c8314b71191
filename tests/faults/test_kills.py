"""SIGKILL of the server (alone, or with its whole process tree: the fs process and the
sandboxes) during a commit, an upload and a session command, at seeded random points, then a
restart on the same state directory. Every codebase must hold each file whole, old or new; and
nothing of the dead server may be left: no process, no mount, no cgroup, no delta, no
container."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from agentfense import AsyncSandboxClient, ResourceLimits, SandboxError
from agentfense._proto.sandbox import v1 as pb
from agentfense.testing import ServerProcess, start_server_process

from ._content import REPEATS, content, generation, python_writer, shell_writer
from ._host import Footprint, kill_all, process_tree

pytestmark = pytest.mark.anyio

SEED = int(os.environ.get("AGENTFENSE_FAULT_SEED", "1205"))
KILLS = 4  # per case: two of the whole process tree, two of the server alone
WRITE = [{"pattern": "**", "permission": "write"}]
FILES = 300  # rewritten by each round's command
NEW = 100  # created by it
LINKS = 10  # given a second name (committed as copies)
BUSYBOX = "agentfense/busybox:latest"
# Memory limits put the sandbox's processes in limit cgroups as well.
LIMITED = ResourceLimits(memory_bytes=256 * 1024 * 1024, pids_limit=256)


def _kill(server: ServerProcess, whole_tree: bool, tree: dict[int, int] | None = None) -> None:
    """SIGKILL the server alone, or its whole process ``tree`` (found now if not given)."""
    if whole_tree:
        kill_all(tree or process_tree(server.process.pid))
    else:
        os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()


async def _start(directory: Path) -> ServerProcess:
    return await anyio.to_thread.run_sync(start_server_process, directory)


def _files(state_dir: Path, codebase_id: str) -> dict[str, bytes]:
    """The codebase's files as the disk holds them (every regular file, by relative path)."""
    root = state_dir / "codebases" / codebase_id / "files"
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def _check(files: dict[str, bytes], before: dict[str, int], gen: int) -> dict[str, int]:
    """Each file whole, with its generation before the round or the round's; every file one
    the rounds wrote (no temporary file of a commit or an upload). Their generations now."""
    now = {}
    for name, data in sorted(files.items()):
        base = name.removesuffix(".link")
        assert base in before or base.startswith(("data/n", "up/")), f"{name} is no file of ours"
        found = generation(base, data, REPEATS if not base.startswith("up/") else UPLOAD_REPEATS)
        if name.endswith(".link"):
            assert found <= gen, name  # a second name: whole, of some round
            continue
        assert found in (before.get(name, gen), gen), f"{name} is of generation {found}"
        now[name] = found
    assert set(before) <= set(now), f"files lost: {sorted(set(before) - set(now))[:5]}"
    return now


async def _restart_and_check(
    tmp_path: Path, footprint: Footprint, run: Run
) -> tuple[ServerProcess, dict[str, bytes]]:
    """Start a server on the dead one's state directory: it must have swept everything the
    dead one left, and still serve the codebase."""
    codebase_id = run.codebase_id
    server = run.server = await _start(tmp_path)
    left = await footprint.until_clean()
    assert left == [], server.log()
    async with AsyncSandboxClient(server.endpoint) as client:
        assert await client.list_sandboxes() == []
        assert (await client.get_codebase(codebase_id)).id == codebase_id
    return server, await anyio.to_thread.run_sync(_files, server.state_dir, codebase_id)


async def _delta_count(upper: Path) -> int:
    try:
        return len(os.listdir(upper))
    except FileNotFoundError:
        return 0


async def _kill_in_commit(
    server: ServerProcess,
    upper: Path,
    total: int,
    threshold: int,
    run: Callable[[], object],
    sandboxes: list[str],
    whole_tree: bool,
) -> Footprint:
    """Run the command (``run``, which writes ``total`` entries into ``upper``) and kill the
    server once it wrote them all (``threshold`` == ``total``: the commit is about to start)
    and at most ``threshold`` remain in the delta: the commit is moving them."""
    done = anyio.Event()

    async def command() -> None:
        try:
            await run()  # type: ignore[misc]
        except SandboxError:
            pass  # the server went away under it
        finally:
            done.set()

    # Taken beforehand: a look at every process of the host takes longer than a commit.
    footprint = Footprint.of(server, sandboxes)
    async with anyio.create_task_group() as tg:
        tg.start_soon(command)
        written = False
        with anyio.fail_after(60):
            while not done.is_set():
                count = await _delta_count(upper)
                written = written or count >= total
                if written and count <= threshold:
                    break
                await anyio.sleep(0.0005)
        _kill(server, whole_tree, footprint.processes)
    return footprint


@dataclass
class Run:
    """The server of a case (the latest restart), its codebase and the generations the
    codebase holds."""

    server: ServerProcess
    codebase_id: str
    known: dict[str, int]


@pytest.fixture
async def first(tmp_path: Path) -> AsyncIterator[Run]:
    """A server with a codebase of ``FILES`` files at generation 0."""
    server = await _start(tmp_path)
    run = Run(server, "", {})
    try:
        names = [f"data/f{i:03}" for i in range(FILES)]
        async with AsyncSandboxClient(server.endpoint) as client:
            codebase = await client.create_codebase("faults")
            sandbox = await client.create_sandbox(codebase.id, permissions=WRITE)
            await client.start_sandbox(sandbox.id)
            made = await client.exec(sandbox.id, f"mkdir data && {python_writer(names, 0)}")
            assert made.exit_code == 0, made.stderr
            await client.destroy_sandbox(sandbox.id)
        run.codebase_id, run.known = codebase.id, dict.fromkeys(names, 0)
        yield run
    finally:
        if run.server.process.poll() is None:
            assert await anyio.to_thread.run_sync(run.server.stop) == 0, run.server.log()


async def test_sigkill_during_a_commit(tmp_path: Path, first: Run) -> None:
    rng = random.Random(f"{SEED}-commit")
    server, codebase_id, known = first.server, first.codebase_id, first.known
    names = sorted(known)
    mid_commit = 0
    for gen in range(1, KILLS + 1):
        whole_tree = gen % 2 == 1  # the whole process tree, then the server alone, in turn
        new = [f"data/n{gen}-{i:03}" for i in range(NEW)]
        total = FILES + NEW + LINKS
        async with AsyncSandboxClient(server.endpoint) as client:
            sandbox = await client.create_sandbox(
                codebase_id, permissions=WRITE, resources=LIMITED if gen % 2 else None
            )
            await client.start_sandbox(sandbox.id)
            await client.exec(sandbox.id, "sleep 1000 &")  # a background job, to be killed
            command = python_writer(names + new, gen, links=LINKS)
            footprint = await _kill_in_commit(
                server,
                server.state_dir / "deltas" / sandbox.id / "upper" / "data",
                total,
                rng.randint(0, total),
                lambda: client.exec(sandbox.id, command),  # noqa: B023
                [sandbox.id],
                whole_tree,
            )
        server, files = await _restart_and_check(tmp_path, footprint, first)
        now = _check(files, known, gen)
        mid_commit += 0 < sum(g == gen for g in now.values()) < len(now)
        known = now
    print(f"{KILLS} kills during commits survived, {mid_commit} of them amid the renames")


UPLOAD_REPEATS = 250_000  # about 2.5 MiB: streamed through a temporary file
CHUNK = 64 * 1024


async def test_sigkill_during_an_upload(tmp_path: Path, first: Run) -> None:
    rng = random.Random(f"{SEED}-upload")
    server, codebase_id, known = first.server, first.codebase_id, first.known
    name = "up/big.bin"
    async with AsyncSandboxClient(server.endpoint) as client:
        await client.upload_file(codebase_id, name, content(name, 0, UPLOAD_REPEATS))
    known = {**known, name: 0}
    landed = 0
    for gen in range(1, KILLS + 1):
        whole_tree = gen % 2 == 1  # the whole process tree, then the server alone, in turn
        data = content(name, gen, UPLOAD_REPEATS)
        pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        # Killed after a random chunk, or a moment after the stream ended (as the file is
        # renamed in, or once it was: an upload reported done must be there).
        kill_after = rng.choice([rng.randint(1, len(pieces)), len(pieces) + 1])
        footprint = Footprint.of(server, [])
        killed = server
        sent = anyio.Event()

        async def chunks() -> AsyncIterator[pb.UploadChunk]:
            meta = pb.UploadChunkMetadata(
                codebase_id=codebase_id,
                file_path=name,
                total_size=len(data),  # noqa: B023
            )
            yield pb.UploadChunk(metadata=meta)
            for index, piece in enumerate(pieces, 1):  # noqa: B023
                yield pb.UploadChunk(data=piece)
                if index == kill_after:  # noqa: B023
                    sent.set()  # noqa: B023
                    await anyio.sleep(1)  # (the stream breaks meanwhile)
            sent.set()  # noqa: B023

        async def kill() -> None:
            await sent.wait()  # noqa: B023
            await anyio.sleep(rng.random() * 0.02)
            footprint.processes = process_tree(killed.process.pid)  # noqa: B023
            _kill(killed, whole_tree)  # noqa: B023

        done = False
        async with AsyncSandboxClient(server.endpoint) as client, anyio.create_task_group() as tg:
            tg.start_soon(kill)
            try:
                await client._upload(chunks)
                done = True
            except SandboxError:
                pass
        server, files = await _restart_and_check(tmp_path, footprint, first)
        known = _check(files, known, gen)
        landed += known[name] == gen
        assert known[name] == gen or not done, "an upload reported done was lost"
        tmp = server.state_dir / "codebases" / codebase_id / "tmp"
        assert os.listdir(tmp) == []  # no half-written upload kept
    print(f"{KILLS} kills during uploads survived; {landed} uploads landed")


async def test_sigkill_during_a_session_command(tmp_path: Path, first: Run) -> None:
    rng = random.Random(f"{SEED}-session")
    server, codebase_id, known = first.server, first.codebase_id, first.known
    names = sorted(known)
    for gen in range(1, KILLS + 1):
        whole_tree = gen % 2 == 1  # the whole process tree, then the server alone, in turn
        new = [f"data/n{gen}-{i:03}" for i in range(NEW)]
        total = FILES + NEW
        async with AsyncSandboxClient(server.endpoint) as client:
            sandbox = await client.create_sandbox(codebase_id, permissions=WRITE)
            await client.start_sandbox(sandbox.id)
            session = await client.create_session(sandbox.id)
            await client.session_exec(session.id, "sleep 1000 &")
            command = python_writer(names + new, gen)
            # Killed while the command writes, or as its commit moves the files.
            threshold = rng.choice([rng.randint(0, total), total + 1])
            footprint = await _kill_in_commit(
                server,
                server.state_dir / "deltas" / sandbox.id / "upper" / "data",
                total if threshold <= total else rng.randint(1, total),
                threshold,
                lambda: client.session_exec(session.id, command),  # noqa: B023
                [sandbox.id],
                whole_tree,
            )
        server, files = await _restart_and_check(tmp_path, footprint, first)
        now = _check(files, known, gen)
        known = now


async def test_sigkill_during_a_docker_session_command(tmp_path: Path, first: Run) -> None:
    """A container outlives the server that started it: the next one removes it."""
    rng = random.Random(f"{SEED}-docker")
    server, codebase_id, known = first.server, first.codebase_id, first.known
    names = sorted(known)[:100]
    for gen in range(1, 3):
        whole_tree = gen % 2 == 1
        async with AsyncSandboxClient(server.endpoint) as client:
            sandbox = await client.create_sandbox(
                codebase_id, permissions=WRITE, runtime="docker", image=BUSYBOX
            )
            await client.start_sandbox(sandbox.id)
            session = await client.create_session(sandbox.id)
            await client.session_exec(session.id, "sleep 1000 &")
            command = shell_writer(names, gen)
            footprint = await _kill_in_commit(
                server,
                server.state_dir / "deltas" / sandbox.id / "upper" / "data",
                len(names),
                rng.randint(0, len(names)),
                lambda: client.session_exec(session.id, command),  # noqa: B023
                [sandbox.id],
                whole_tree,
            )
        server, files = await _restart_and_check(tmp_path, footprint, first)
        now = _check(files, known, gen)
        known = now
