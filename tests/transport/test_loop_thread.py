"""The SDK's one private loop thread: shared by trio callers, asyncio cleanup and the sync API;
a forked child starts its own; the interpreter's exit stops it without hanging."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
import trio
from _server_process import ServerProcess, environment

from agentfense import AsyncSandboxClient, SandboxClient
from agentfense._transport import finishing


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    server = ServerProcess()
    yield server
    server.finish()


def _sdk_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("agentfense-")]


def test_trio_asyncio_cleanup_and_sync_share_one_thread(server_process: ServerProcess) -> None:
    endpoint = server_process.endpoint

    async def from_trio() -> str:
        async with AsyncSandboxClient(endpoint) as client:
            return (await client.get_sandbox("sb_trio")).id

    async def from_asyncio_cleanup() -> str:
        async with AsyncSandboxClient(endpoint) as client:
            with finishing(5):  # its calls run on the private loop
                return (await client.get_sandbox("sb_asyncio")).id

    assert trio.run(from_trio) == "sb_trio"
    assert asyncio.run(from_asyncio_cleanup()) == "sb_asyncio"
    with SandboxClient(endpoint) as client:
        assert client.get_sandbox("sb_sync").id == "sb_sync"
    assert _sdk_threads() == ["agentfense-loop"]


def _run_script(source: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environment(),
    )


def test_a_forked_child_gets_its_own_loop(server_process: ServerProcess) -> None:
    """The child starts one loop thread of its own, used by every API; a connection made
    before the fork fails there with a sentence (it would wait forever on a loop that no
    thread runs); the parent's loop goes on serving the parent."""
    done = _run_script(
        f"""
        import os, threading, warnings, trio
        from agentfense import AsyncSandboxClient, ConnectionError
        from agentfense.sync import SandboxClient

        warnings.filterwarnings("ignore", "This process", DeprecationWarning)  # 3.12+

        def sdk_threads():
            return [t.native_id for t in threading.enumerate() if t.name.startswith("agentfense-")]

        async def get(client, sandbox_id):
            return (await client.get_sandbox(sandbox_id)).id

        async def fresh(sandbox_id):
            async with AsyncSandboxClient({server_process.endpoint!r}) as client:
                return await get(client, sandbox_id)

        before_fork = AsyncSandboxClient({server_process.endpoint!r})
        trio.run(get, before_fork, "sb_parent")
        parent_threads = sdk_threads()
        pid = os.fork()
        if pid == 0:
            try:
                trio.run(get, before_fork, "sb_child")
            except ConnectionError as exc:
                print("old connection:", exc.message, flush=True)
            print("child trio", trio.run(fresh, "sb_c1"), flush=True)
            with SandboxClient({server_process.endpoint!r}) as client:
                print("child sync", client.get_sandbox("sb_c2").id, flush=True)
            threads = sdk_threads()
            print("child threads", len(threads), threads != parent_threads, flush=True)
            trio.run(before_fork.close)
            os._exit(0)
        print("child exit code", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
        print("parent again", trio.run(get, before_fork, "sb_p2"), flush=True)
        print("parent threads", sdk_threads() == parent_threads, flush=True)
        trio.run(before_fork.close)
        """
    )
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        "old connection: this connection was made before the process forked (or the "
        "interpreter is exiting): its event loop does not run here; open a new client",
        "child trio sb_c1",
        "child sync sb_c2",
        "child threads 1 True",
        "child exit code 0",
        "parent again sb_p2",
        "parent threads True",
    ]
    assert done.returncode == 0


def test_the_exit_cancels_what_runs_on_the_loop_and_does_not_hang(
    server_process: ServerProcess,
) -> None:
    """A sync call still waiting (in a daemon thread) when the interpreter exits: the call
    is cancelled on the server and the process ends at once."""
    began = time.monotonic()
    done = _run_script(
        f"""
        import threading, time
        from agentfense.sync import SandboxClient

        client = SandboxClient({server_process.endpoint!r})
        threading.Thread(target=client.get_sandbox, args=("hang",), daemon=True).start()
        time.sleep(0.5)
        print("leaving", flush=True)
        """,
        timeout=30,
    )
    assert (done.returncode, done.stdout) == (0, "leaving\n")
    assert time.monotonic() - began < 5
    assert server_process.finish(wait_for_a_cancellation=True) == "a call was cancelled"
