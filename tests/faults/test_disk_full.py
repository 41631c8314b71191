"""The state directory's disk full (a 64 MiB tmpfs): filled through a sandbox and through
uploads, then to the last byte. Every request then ends in time, with a typed error and a
sentence (never INTERNAL or UNKNOWN) or a success; nothing half-written reaches a codebase;
and once space is freed everything works again."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from agentfense import AsyncSandboxClient, SandboxError
from agentfense.errors import StatusCode
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio

WRITE = [{"pattern": "**", "permission": "write"}]
MIB = 1024 * 1024
BAD = (StatusCode.INTERNAL, StatusCode.UNKNOWN)


def _state_dir(directory: Path) -> Path:
    """Where ``start_server_process(directory)`` keeps the server's state."""
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"agentfense-state-{digest}"


@dataclass
class SmallDisk:
    """The server (the latest start) whose state directory is a 64 MiB tmpfs of its own."""

    directory: Path
    server: ServerProcess | None = None

    def start(self) -> ServerProcess:
        self.server = start_server_process(
            self.directory, settings={"max_upload_bytes": str(16 * MIB)}
        )
        self.server.owns_state = False  # a mount point: unmounted by the fixture
        return self.server


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    state = _state_dir(tmp_path)
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0711", "tmpfs", state], check=True)
    disk = SmallDisk(tmp_path)
    try:
        disk.start()
        yield disk
    finally:
        if disk.server is not None and disk.server.process.poll() is None:
            assert disk.server.stop() == 0, disk.server.log()
        subprocess.run(["umount", "--lazy", state], check=True)
        state.rmdir()


def _fill(path: Path) -> int:
    """Write ``path`` until the disk is full; the bytes written."""
    written = 0
    block = b"\0" * 65536
    with path.open("wb", buffering=0) as handle:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    written += handle.write(block[:size]) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


async def _outcome(what: str, call: Callable[[], Awaitable[Any]], seen: dict[str, str]) -> Any:
    """Run one request against the full disk: it ends within 30 s, in a success or a typed
    error that says something; never INTERNAL or UNKNOWN."""
    try:
        with anyio.fail_after(30):
            result = await call()
    except SandboxError as exc:
        error = exc
    else:
        seen[what] = "ok"
        return result
    seen[what] = f"{type(error).__name__}({error.code}): {error}"
    assert error.code not in BAD, seen[what]
    assert len(str(error).split()) >= 3, seen[what]  # a sentence
    return None


async def test_a_full_disk(small_disk: SmallDisk) -> None:
    server = small_disk.server
    assert server is not None
    state = server.state_dir
    seen: dict[str, str] = {}
    async with AsyncSandboxClient(server.endpoint) as client:
        codebase = await client.create_codebase("full")
        await client.upload_file(codebase.id, "src/app.py", "print('app')\n")
        sandbox = await client.create_sandbox(codebase.id, permissions=WRITE)
        await client.start_sandbox(sandbox.id)

        # Through the sandbox, then through uploads, until the disk is full.
        half = await client.exec(sandbox.id, "dd if=/dev/zero of=fill bs=1M count=32")
        assert half.exit_code == 0, half.stderr
        # A file with two names stays in the delta and is committed as a copy each time.
        linked = await client.exec(
            sandbox.id,
            "head -c 4000000 /dev/urandom > linked && ln linked linked2 && md5sum linked",
        )
        assert linked.exit_code == 0, linked.stderr
        digest = linked.stdout.split()[0]

        # Through uploads: refused with a typed error, and nothing of the refused file kept.
        uploaded = 0
        with anyio.fail_after(60):
            for index in range(100):
                name = f"up/{index}.bin"
                refused = await _outcome(
                    "upload past the disk",
                    lambda: client.upload_file(codebase.id, name, bytes([index]) * MIB),  # noqa: B023
                    seen,
                )
                if refused is None:
                    listing = await client.list_files(codebase.id, "", recursive=True)
                    assert name not in {f.path for f in listing}
                    break
                uploaded += 1
            else:
                pytest.fail("uploads never met the full disk")
        assert uploaded > 0
        assert os.listdir(state / "codebases" / codebase.id / "tmp") == []
        # The sandbox's command meets ENOSPC, and says so; the server goes on.
        more = await client.exec(sandbox.id, "dd if=/dev/zero of=more bs=1M count=64")
        assert more.exit_code != 0
        assert "No space left on device" in more.stderr

        # To the last byte.
        filler = state / "filler"
        await anyio.to_thread.run_sync(_fill, filler)

        session = None
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("create codebase", lambda: client.create_codebase("another")),
            ("upload", lambda: client.upload_file(codebase.id, "late.txt", "late\n" * 1000)),
            ("create sandbox", lambda: client.create_sandbox(codebase.id, permissions=WRITE)),
            ("exec that reads", lambda: client.exec(sandbox.id, "cat src/app.py")),
            ("exec that writes", lambda: client.exec(sandbox.id, "seq 100000 > seq.txt")),
            ("write a sandbox file", lambda: client.write_sandbox_file(sandbox.id, "w.txt", b"w")),
            ("read a sandbox file", lambda: client.read_sandbox_file(sandbox.id, "src/app.py")),
            ("list sandbox files", lambda: client.list_sandbox_files(sandbox.id, "")),
            ("create session", lambda: client.create_session(sandbox.id)),
            ("download", lambda: client.download_file(codebase.id, "src/app.py")),
            ("list codebases", lambda: client.list_codebases()),
        ]
        for what, call in calls:
            result = await _outcome(what, call, seen)
            if what.startswith("exec") and result is not None:
                seen[what] = f"exit {result.exit_code} {result.stderr.strip()[-60:]!r}"
                if what == "exec that writes":  # a failure, never reported as a success
                    assert result.exit_code != 0
            if what == "create session" and result is not None:
                session = result
        if session is not None:
            opened = session  # (the lambda sees a name that is never None)
            await _outcome(
                "session exec", lambda: client.session_exec(opened.id, "echo x > s.txt"), seen
            )
        await _outcome("stop sandbox", lambda: client.stop_sandbox(sandbox.id), seen)
        await _outcome("start sandbox", lambda: client.start_sandbox(sandbox.id), seen)
        deleted = await _outcome(
            "exec that deletes", lambda: client.exec(sandbox.id, "rm -f up/0.bin"), seen
        )
        if deleted is not None:
            seen["exec that deletes"] = f"exit {deleted.exit_code} {deleted.stderr[-60:]!r}"
        await _outcome("destroy sandbox", lambda: client.destroy_sandbox(sandbox.id), seen)

        # Whatever reached the codebase is whole, and nothing else is there.
        kept = {f.path for f in await client.list_files(codebase.id, "", recursive=True)}
        ours = {
            "src",
            "src/app.py",
            "up",
            "fill",
            "more",
            "linked",
            "linked2",
            "seq.txt",
            "s.txt",
            "w.txt",
        }
        assert kept <= ours | {f"up/{i}.bin" for i in range(uploaded)}, kept - ours
        data = await client.download_file(codebase.id, "linked")
        assert hashlib.md5(data).hexdigest() == digest
        for index in range(uploaded):
            with suppress(SandboxError):  # (one may have been deleted by the sandbox)
                data = await client.download_file(codebase.id, f"up/{index}.bin")
                assert data == bytes([index]) * MIB
        if seen["upload"] == "ok":
            assert await client.download_file(codebase.id, "late.txt") == b"late\n" * 1000

        print("\n" + "\n".join(f"{what}: {outcome}" for what, outcome in seen.items()))
        for left in await client.list_sandboxes():  # made while the disk was full
            await client.destroy_sandbox(left.id)

    # Killed on the full disk, the server starts again on it and serves.
    await anyio.to_thread.run_sync(_fill, state / "filler-2")
    server.process.kill()
    server.process.wait()
    server = await anyio.to_thread.run_sync(small_disk.start)
    async with AsyncSandboxClient(server.endpoint) as client:
        assert codebase.id in {c.id for c in await client.list_codebases()}
        refused = await _outcome(
            "create codebase, restarted", lambda: client.create_codebase("x"), seen
        )
        assert refused is None
        assert await client.download_file(codebase.id, "src/app.py") == b"print('app')\n"

        # Space freed: everything works again.
        filler.unlink()
        (state / "filler-2").unlink()
        await client.delete_codebase(codebase.id)
        again = await client.create_codebase("again")
        await client.upload_file(again.id, "big.bin", b"b" * (4 * MIB))
        fresh = await client.create_sandbox(again.id, permissions=WRITE)
        await client.start_sandbox(fresh.id)
        ran = await client.exec(fresh.id, "seq 100000 > seq.txt && wc -c < big.bin")
        assert (ran.exit_code, ran.stdout.strip()) == (0, str(4 * MIB)), ran.stderr
        session = await client.create_session(fresh.id)
        assert (await client.session_exec(session.id, "cat seq.txt | wc -l")).stdout == "100000\n"
        assert await client.download_file(again.id, "seq.txt") == b"".join(
            b"%d\n" % i for i in range(1, 100001)
        )
        await client.destroy_sandbox(fresh.id)
