"""Rules that do what they say, on a real server: a user's rule for one exact path uncovers
what the preset hides, and only that; agent-safe's ``tmp/**`` is the codebase's tmp/ folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfense import AsyncSandbox, AsyncSandboxClient, PermissionRule, SandboxError

pytestmark = pytest.mark.anyio


@pytest.fixture
def env_project(project: Path) -> Path:
    (project / ".env").write_text("TOKEN=hunter2\n")
    (project / ".env.example").write_text("TOKEN=\n")
    (project / "app").mkdir()
    (project / "app" / ".env.example").write_text("APP_TOKEN=\n")
    return project


async def test_an_exact_path_rule_uncovers_one_file_the_preset_hides(
    endpoint: str, env_project: Path
) -> None:
    async with await AsyncSandbox.from_local(
        env_project,
        preset="agent-safe",
        permissions=[PermissionRule("/.env.example", "read")],
        endpoint=endpoint,
    ) as sandbox:
        assert await sandbox.read_file(".env.example") == "TOKEN=\n"
        shown = await sandbox.run("cat .env.example; ls -A; ls -A app")
        assert shown.stdout == "TOKEN=\n.env.example\nREADME.md\napp\ndata.bin\nsrc\n"
        assert (await sandbox.run("cat .env")).exit_code == 1
        with pytest.raises(SandboxError, match="not found"):
            await sandbox.read_file(".env")
        with pytest.raises(SandboxError, match="not found"):
            await sandbox.read_file("app/.env.example")  # another path: still hidden
        assert (await sandbox.run("echo changed > .env.example")).exit_code != 0


async def test_agent_safe_writes_the_codebases_tmp_and_the_sandbox_has_its_own(
    endpoint: str, project: Path
) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="agent-safe", endpoint=endpoint
    ) as sandbox:
        done = await sandbox.run(
            "mkdir -p /workspace/tmp && echo kept > /workspace/tmp/a.txt && "
            "echo scratch > /tmp/b.txt && cat /tmp/b.txt"
        )
        assert (done.exit_code, done.stdout) == (0, "scratch\n"), done.stderr
        codebase_id = sandbox.codebase_id
        async with AsyncSandboxClient(endpoint) as owner:
            assert await owner.download_file(codebase_id, "tmp/a.txt") == b"kept\n"
            names = {f.path for f in await owner.list_files(codebase_id, recursive=True)}
            assert {"tmp/b.txt", "b.txt"}.isdisjoint(names)
