"""The sandbox file API goes through the sandbox's view: its permissions apply, under the
server's file RPCs and under the fallback to commands in the sandbox alike."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    InvalidConfigurationError,
    PermissionDeniedError,
    SandboxError,
    SandboxNotRunningError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def secret_project(project: Path) -> Path:
    (project / ".env").write_text("TOKEN=hunter2\n")
    (project / "secrets").mkdir()
    (project / "secrets" / "key").write_text("k\n")
    return project


@pytest.mark.parametrize("via", ["rpc", "commands"])
async def test_permissions_apply_to_the_file_api(
    endpoint: str, secret_project: Path, via: str
) -> None:
    async with await AsyncSandbox.from_local(
        secret_project, preset="agent-safe", endpoint=endpoint
    ) as sandbox:
        sandbox.client.lacks_file_rpcs = via == "commands"
        assert await sandbox.read_file("src/app.py") == "print('hello from app')\n"
        with pytest.raises(SandboxError, match="not found") as hidden:
            await sandbox.read_file("/workspace/.env")
        assert hidden.value.code == 5
        with pytest.raises(SandboxError, match="not found"):
            await sandbox.read_file("secrets/key")
        names = {f.name for f in await sandbox.list_files("/workspace", recursive=True)}
        assert {".env", "secrets", "key"}.isdisjoint(names)
        assert {"src", "app.py", "README.md"} <= names
        with pytest.raises(PermissionDeniedError):
            await sandbox.write_file("README.md", "defaced")
        with pytest.raises(PermissionDeniedError):
            await sandbox.write_file("output/.env", "TOKEN=planted")  # hidden even in output/
        await sandbox.write_file("/workspace/output/deep/report.txt", b"\x00\xffbinary")
        assert await sandbox.read_file_bytes("output/deep/report.txt") == b"\x00\xffbinary"
        codebase_id = sandbox.codebase_id
        async with AsyncSandboxClient(endpoint) as owner:
            # Committed to the codebase at once; the owner's access is unfiltered.
            assert await owner.download_file(codebase_id, "output/deep/report.txt") == (
                b"\x00\xffbinary"
            )
            assert await owner.download_file(codebase_id, "README.md") == b"# demo\n"
            assert await owner.download_file(codebase_id, ".env") == b"TOKEN=hunter2\n"


async def test_file_rpcs_work_on_a_stopped_sandbox_and_refuse_bad_paths(
    endpoint: str, secret_project: Path
) -> None:
    async with await AsyncSandbox.from_local(
        secret_project, preset="development", endpoint=endpoint, auto_start=False
    ) as sandbox:
        await sandbox.write_file("notes.txt", "written while stopped\n")
        assert await sandbox.read_file("notes.txt") == "written while stopped\n"
        for bad in ["../x", "/workspace/../etc/passwd", "a\x00b"]:
            with pytest.raises(InvalidConfigurationError):
                await sandbox.read_file(bad)
        # Outside the workspace is the sandbox's own file system: only while it runs.
        with pytest.raises(SandboxNotRunningError):
            await sandbox.read_file("/etc/hostname")
        await sandbox.start()
        assert await sandbox.read_file("/etc/hostname") == "sandbox\n"
        # A symlink the sandbox planted is never followed by the server.
        await sandbox.run("ln -s /etc/hostname link")
        with pytest.raises(InvalidConfigurationError, match="symbolic link"):
            await sandbox.read_file("link")
        with pytest.raises(InvalidConfigurationError, match="symbolic link"):
            await sandbox.write_file("link", "through the link")
        result = await sandbox.run("cat notes.txt; readlink link")
        assert result.stdout == "written while stopped\n/etc/hostname\n"


async def test_reading_what_never_ends_outside_the_workspace_ends_at_once(
    endpoint: str, project: Path
) -> None:
    """A path outside /workspace is read by a command in the sandbox: what the sandbox put
    there (a link to /dev/zero, a FIFO nobody writes, a sparse file of 100 GiB) is refused
    at once, not read until the command's default timeout (300 s)."""
    async with await AsyncSandbox.from_local(project, endpoint=endpoint) as sandbox:
        planted = await sandbox.run(
            "ln -s /dev/zero /tmp/zero && mkfifo /tmp/pipe && truncate -s 100G /tmp/huge"
        )
        assert planted.exit_code == 0, planted.stderr
        for path in ("/tmp/zero", "/tmp/pipe"):
            with anyio.fail_after(10), pytest.raises(InvalidConfigurationError) as refused:
                await sandbox.read_file_bytes(path)
            assert str(refused.value) == (
                f"cannot read {path}: it is not a regular file (a FIFO, a socket or a device)"
            )
        # (Past the test server's small output cap (max_output_bytes): cut short.)
        with anyio.fail_after(20), pytest.raises(SandboxError, match="cut short"):
            await sandbox.read_file_bytes("/tmp/huge")
        with anyio.fail_after(10), pytest.raises(InvalidConfigurationError, match="directory"):
            await sandbox.read_file_bytes("/tmp")


async def test_a_fifo_in_the_workspace_is_refused_as_not_a_regular_file(
    endpoint: str, project: Path
) -> None:
    async with await AsyncSandbox.from_local(
        project, endpoint=endpoint, preset="development"
    ) as sandbox:
        assert (await sandbox.run("mkfifo /workspace/pipe && echo made")).stdout == "made\n"
        for attempt in (sandbox.read_file_bytes, lambda path: sandbox.write_file(path, "x")):
            with anyio.fail_after(10), pytest.raises(InvalidConfigurationError) as refused:
                await attempt("/workspace/pipe")
            assert "/workspace/pipe is not a regular file" in str(refused.value)
