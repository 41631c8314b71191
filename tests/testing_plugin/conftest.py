"""A real server for the plugin's tests, and real pytest sessions (child processes) that load
the plugin next to pytest-trio or anyio's pytest plugin, as a user's project does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentfense import SandboxClient
from agentfense.testing import ServerProcess, start_server_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server_process(tmp_path_factory.mktemp("server")) as running:
        yield running


@dataclass
class Session:
    """What a child pytest session did: its exit code, its output, the sandboxes it made."""

    code: int
    output: str
    sandboxes: list[str]


@dataclass
class Pytester:
    """Runs ``pytest`` in a child process on test files written into ``directory``."""

    directory: Path
    endpoint: str | None

    def write(self, name: str, source: str) -> None:
        (self.directory / name).write_text(textwrap.dedent(source))

    def run(self, *args: str, autoload: bool = False, env: dict[str, str] | None = None) -> Session:
        """``autoload``: let pytest load plugins from entry points (else only those named
        with ``-p``: the agentfense plugin and the ones in ``args``)."""
        record = self.directory / "sandboxes.txt"
        record.write_text("")
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("AGENTFENSE_", "PYTEST_"))
        }
        environ["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [environ.get("PYTHONPATH")])]
        )
        environ["RECORD"] = str(record)
        if self.endpoint is not None:
            environ["AGENTFENSE_ENDPOINT"] = self.endpoint
        if not autoload:
            environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
            args = ("-p", "agentfense.testing.plugin", *args)
        environ.update(env or {})
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "--strict-markers",
                "-W",
                "error",
                "-p",
                "no:cacheprovider",
                *args,
                str(self.directory),
            ],
            cwd=self.directory,
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return Session(done.returncode, done.stdout + done.stderr, record.read_text().split())


@pytest.fixture
def pytester_on_server(tmp_path: Path, server: ServerProcess) -> Pytester:
    """Child sessions whose sandboxes live on ``server`` (through AGENTFENSE_ENDPOINT)."""
    (tmp_path / "session").mkdir()
    return Pytester(tmp_path / "session", server.endpoint)


def left_on(server: ServerProcess, sandboxes: list[str]) -> list[str]:
    """Which of ``sandboxes`` the server still holds."""
    with SandboxClient(server.endpoint) as client:
        held = {info.id for info in client.list_sandboxes()}
    return [s for s in sandboxes if s in held]
