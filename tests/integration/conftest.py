from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
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


DEFAULT_PORT = 9000


def _listener_pids(port: int) -> set[int]:
    """The pids that hold a socket listening on TCP ``port`` (any address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError):
                fds = os.listdir(f"/proc/{entry}/fd")
                if any(os.readlink(f"/proc/{entry}/fd/{fd}") in inodes for fd in fds):
                    pids.add(int(entry))
    return pids


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on the SDK's default endpoint (``localhost:9000``), for code that names no
    endpoint: the user's guide (the docs' samples name theirs in AGENTFENSE_ENDPOINT). Only
    one can listen there at a time: if another one does (another test run), fail rather than
    talk to it."""
    busy = "localhost:9000 is taken (another test run?); try again when it is free"
    if _listener_pids(DEFAULT_PORT):
        pytest.fail(busy)
    try:
        running = start_server_process(
            tmp_path_factory.mktemp("default-server"), listen=f"127.0.0.1:{DEFAULT_PORT}"
        )
    except RuntimeError as exc:
        pytest.fail(f"a server for the samples must listen on localhost:9000: {exc}")
    if _listener_pids(DEFAULT_PORT) != {running.process.pid}:  # not ours that answered
        running.stop()
        pytest.fail(busy)
    yield running
    assert running.stop() == 0, running.log()


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
