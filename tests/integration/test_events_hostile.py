"""A sandbox's events attacked: by clients that open and leave watches as fast as they can,
ask after seqs no one reached, or watch what is not theirs; by a sandbox whose file names
are not text."""

from __future__ import annotations

import anyio
import pytest

from agentfense import AsyncSandboxClient, EventKind
from agentfense.server._grpc.sandbox_service import MAX_WATCHES

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
