from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentfense import AsyncSandboxClient
from agentfense.testing import ServerProcess, start_server_process

# Small limits so that the tests can reach them quickly.
MAX_UPLOAD = 4 * 1024 * 1024
MAX_OUTPUT = 1024 * 1024


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for the test session, over a real unix socket."""
    running = start_server_process(
        tmp_path_factory.mktemp("server"),
        settings={
            "max_upload_bytes": str(MAX_UPLOAD),
            "max_output_bytes": str(MAX_OUTPUT),
            "expiry_check_interval": "0.2",
        },
    )
    yield running
    code = running.stop()
    assert code == 0, running.log()


@pytest.fixture
def endpoint(server: ServerProcess) -> str:
    return server.endpoint


@pytest.fixture
async def client(endpoint: str) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(endpoint) as connected:
        yield connected


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project on the local disk."""
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('hello from app')\n")
    (root / "README.md").write_text("# demo\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 4)
    return root
