"""What a call leaves behind in the server is freed when the call ends, not by the cyclic
garbage collector: CPython runs its full pass only once the long-lived heap has grown by a
quarter, so a cycle that outlives a young generation (a call that ran for a while) stays in
memory long after the call, and a server that answered many of them at once keeps them all.

The server runs in this process (a real server on a real unix socket, the SDK calling it),
with the collector disabled while the calls run; what the collector would have had to free is
then read from ``gc.garbage``.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense import AsyncSandboxClient
from agentfense.server.app import open_server
from agentfense.server.config import ServerConfig

pytestmark = pytest.mark.anyio

CALLS = 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (the server's loop: grpclib serves on asyncio)


def _server_side(thing: object) -> bool:
    module = str(type(thing).__module__)
    return module.startswith(("agentfense.server", "grpclib.server"))


@pytest.fixture
def state_root() -> Iterator[Path]:
    """A directory the sandboxes' uid can traverse (pytest's tmp_path is private)."""
    root = Path(tempfile.mkdtemp(prefix="agentfense-garbage-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def test_calls_leave_no_cycles_in_the_server(state_root: Path) -> None:
    config = ServerConfig(
        listen=f"unix:{state_root}/server.sock", state_dir=state_root / "state", auth="none"
    )
    async with open_server(config) as address, AsyncSandboxClient(address) as client:
        codebase = await client.create_codebase("garbage")
        await client.upload_file(codebase.id, "README.md", "hello\n")
        garbage = await _calls(client, codebase.id)
    left = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage})
    assert not left, f"{len(garbage)} objects of {CALLS} calls were cycles: {left}"


async def _calls(client: AsyncSandboxClient, codebase_id: str) -> list[object]:
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(CALLS):
            await client.get_codebase(codebase_id)
            await client.list_files(codebase_id, "")
        gc.collect()
        return [thing for thing in gc.garbage if _server_side(thing)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
