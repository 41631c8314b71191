"""The CLI as users run it: ``python -m agentfense ...`` in a child process, against a real
server (over a real unix socket) or the server ``run`` embeds."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense import SandboxClient
from agentfense.testing import ServerProcess, start_server_process


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a user who set no AGENTFENSE_* variable (plus ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFENSE_")}
    env.update(extra)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``agentfense ARGS`` to its end; its output and exit code."""
    return subprocess.run(
        [sys.executable, "-m", "agentfense", *args],
        capture_output=True,
        text=True,
        env=cli_env() if env is None else env,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def start_cli(*args: str) -> subprocess.Popen[str]:
    """Start ``agentfense ARGS`` with its output piped (for signals while it runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "agentfense", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(tmp_path_factory.mktemp("cli-server"))
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def endpoint(server: ServerProcess) -> str:
    return server.endpoint


@pytest.fixture
def client(endpoint: str) -> Iterator[SandboxClient]:
    with SandboxClient(endpoint) as connected:
        yield connected


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('hello from app')\n")
    (root / "notes.txt").write_text("notes\n")
    (root / "secret.txt").write_text("s3cret\n")
    (root / "data.txt").write_text("not a program\n")
    return root


def held(client: SandboxClient) -> tuple[set[str], set[str]]:
    """The ids of every sandbox and codebase on the server."""
    return (
        {s.id for s in client.list_sandboxes()},
        {c.id for c in client.list_codebases()},
    )
