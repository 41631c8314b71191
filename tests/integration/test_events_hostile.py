"""A sandbox's events attacked: by clients that open and leave watches as fast as they can,
ask after seqs no one reached, or watch what is not theirs; by a sandbox whose file names
are not text."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandboxClient, EventKind, SandboxError, SandboxEvent
from agentfense.errors import StatusCode
from agentfense.server._grpc.sandbox_service import MAX_WATCHES
from agentfense.testing import start_server_process

from .test_fs_supervision import _fs_pid

pytestmark = pytest.mark.anyio

RULES = [
    {"pattern": "**", "permission": "write"},
    {"pattern": "**/.env", "permission": "none"},
]


async def _sandbox(client: AsyncSandboxClient) -> str:
    codebase = await client.create_codebase("events-hostile", "tester")
    await client.upload_file(codebase.id, ".env", "SECRET=1\n")
    info = await client.create_sandbox(codebase.id, permissions=RULES, start=True)
    return info.id


async def _drain(events: AsyncIterator[SandboxEvent], into: list[SandboxEvent]) -> None:
    async for event in events:
        into.append(event)


async def test_a_watch_left_frees_its_place_at_once(client: AsyncSandboxClient) -> None:
    """A watch left is no longer open: watching again and again, one at a time, never
    meets the most a sandbox may have (the server does not wait out the fs process's long
    poll of a watcher that left)."""
    sandbox_id = await _sandbox(client)
    with anyio.fail_after(20):
        for _ in range(MAX_WATCHES * 3):
            async with client.watch_events(sandbox_id):
                pass
        async with client.watch_events(sandbox_id) as events:
            assert (await client.exec(sandbox_id, "echo x > after")).exit_code == 0
            event = await events.__anext__()
    assert (event.kind, event.path) == (EventKind.CREATED, "after")
    await client.destroy_sandbox(sandbox_id)


@pytest.mark.parametrize("after", [2**62, 2**63 - 1, 2**63, 2**64 - 1])
async def test_a_watch_after_a_seq_past_any_starts_from_now(
    client: AsyncSandboxClient, after: int
) -> None:
    """``after`` is a uint64 on the wire: one past every seq the sandbox has (up to the
    largest a client can send) watches from now on, as one past the last does; it is not
    a request the fs process refuses (an INTERNAL error)."""
    sandbox_id = await _sandbox(client)
    with anyio.fail_after(20):
        async with client.watch_events(sandbox_id, after=after) as events:
            assert (await client.exec(sandbox_id, "mkdir made")).exit_code == 0
            event = await events.__anext__()
    assert (event.kind, event.path) == (EventKind.CREATED, "made")
    await client.destroy_sandbox(sandbox_id)


async def test_a_watch_across_a_restart_of_the_fs_process_ends_rather_than_lie(
    tmp_path: Path,
) -> None:
    """The events are the fs process's (in memory): when a new process takes the sandbox
    over, what the old one kept and what happened in between are gone, and the new one
    counts from 1 again. A watch then ends with an error saying so (UNAVAILABLE): it never
    goes on silently, missing events and repeating seqs it already gave."""
    server = await anyio.to_thread.run_sync(start_server_process, tmp_path)
    try:
        async with AsyncSandboxClient(server.endpoint) as client:
            sandbox_id = await _sandbox(client)
            seen: list[SandboxEvent] = []
            with anyio.fail_after(30):
                async with client.watch_events(sandbox_id) as events:
                    assert (await client.exec(sandbox_id, "echo > one")).exit_code == 0
                    seen += [await events.__anext__(), await events.__anext__()]
                    fs_pid = await anyio.to_thread.run_sync(_fs_pid, server.process.pid)
                    assert fs_pid is not None
                    os.kill(fs_pid, signal.SIGKILL)
                    assert (await client.exec(sandbox_id, "echo > two")).exit_code == 0
                    with pytest.raises(SandboxError, match="restarted") as raised:
                        await _drain(events, seen)
            assert raised.value.code == StatusCode.UNAVAILABLE
            assert [(e.seq, e.path) for e in seen] == [(1, "one"), (2, "one")]
            # Watched again, it goes on from now.
            async with client.watch_events(sandbox_id) as events:
                assert (await client.exec(sandbox_id, "echo > three")).exit_code == 0
                event = await events.__anext__()
            assert (event.kind, event.path) == (EventKind.CREATED, "three")
    finally:
        assert await anyio.to_thread.run_sync(server.stop) == 0, server.log()


async def test_a_watch_not_yet_read_holds_up_no_other_call(client: AsyncSandboxClient) -> None:
    """``async with sandbox.events()``, then a command, then reading what it did (the
    docs' example): a command that makes more events than the connection's buffers hold
    still returns; the watcher is told what it lost (the loss policy), it does not hang."""
    sandbox_id = await _sandbox(client)
    deep = "/".join(["d" * 200] * 18)  # (each event's path: some 3,800 bytes)
    command = f"mkdir -p {deep} && cd {deep} && for i in $(seq 1500); do echo > f$i; done"
    async with client.watch_events(sandbox_id) as events:
        with anyio.fail_after(12):
            assert (await client.exec(sandbox_id, command)).exit_code == 0
        seen = []
        with anyio.fail_after(20):
            async for event in events:
                seen.append(event)
                if event.path.endswith("/f1500") and event.kind is EventKind.MODIFIED:
                    break
    lost = [event.count for event in seen if event.kind is EventKind.LOST]
    assert lost, "more than the connection held and the server kept: the watcher is told"
    assert sum(lost) + len(seen) - len(lost) == 18 + 2 * 1500, "each event seen or counted"
    await client.destroy_sandbox(sandbox_id)
