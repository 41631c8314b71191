"""A policy that reads every path and nothing more is the kernel's to enforce: the codebase's
files bound read-only, no permission filesystem in the way. It must behave as the view would."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfense import AsyncSandbox, PermissionDeniedError, RuntimeType

pytestmark = pytest.mark.anyio

RUNTIMES = [
    pytest.param({}, id="bwrap"),
    pytest.param(
        {"runtime": RuntimeType.DOCKER, "image": "agentfense/busybox:latest"}, id="docker"
    ),
]


def _workspace_mount(mountinfo: str) -> list[str]:
    """The options and file system type of the mount at /workspace."""
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if fields[4] == "/workspace":
            return [*fields[5].split(","), right.split()[0]]
    raise AssertionError("no mount at /workspace")


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_read_only_is_a_read_only_bind_that_behaves_like_the_view(
    endpoint: str, project: Path, runtime: dict[str, object]
) -> None:
    (project / "tool.sh").write_text("#!/bin/sh\necho tool ran\n")
    (project / "tool.sh").chmod(0o755)
    async with await AsyncSandbox.from_local(
        project,
        preset="read-only",
        endpoint=endpoint,
        **runtime,  # type: ignore[arg-type]
    ) as reader:
        options = _workspace_mount((await reader.run("cat /proc/self/mountinfo")).stdout)
        assert "ro" in options
        assert "fuse" not in options[-1]
        listing = await reader.run("cat README.md src/app.py; ./tool.sh")
        assert listing.stdout == "# demo\nprint('hello from app')\ntool ran\n"
        for write in ("echo x > README.md", "touch new", "rm README.md", "mkdir d"):
            refused = await reader.run(write)
            assert refused.exit_code != 0, write
            assert "Read-only file system" in refused.stderr, write
        assert await reader.read_file("README.md") == "# demo\n"
        with pytest.raises(PermissionDeniedError):
            await reader.write_file("README.md", "changed")
        async with await AsyncSandbox.from_codebase(
            reader.codebase_id, preset="full-access", endpoint=endpoint
        ) as writer:
            await writer.run("echo fresh > fresh.txt && rm data.bin")
        seen = await reader.run("cat fresh.txt; ls")
        assert seen.stdout == "fresh\nREADME.md\nfresh.txt\nsrc\ntool.sh\n"


async def test_a_policy_that_hides_anything_keeps_the_view(endpoint: str, project: Path) -> None:
    (project / ".env").write_text("SECRET=1\n")
    async with await AsyncSandbox.from_local(
        project, preset="agent-safe", endpoint=endpoint
    ) as sandbox:
        options = _workspace_mount((await sandbox.run("cat /proc/self/mountinfo")).stdout)
        assert "fuse" in options[-1]
        assert ".env" not in (await sandbox.run("ls -a")).stdout.split()
