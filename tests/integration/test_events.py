"""A sandbox's events on a real server: what its commands do to its files, and what its
permissions refused (with the rule that decided), in order, from the moment the watch began;
a watcher that falls behind is told what it lost; the stream ends with the sandbox."""

from __future__ import annotations

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    EventKind,
    ResourceLimitExceededError,
    Sandbox,
    SandboxClient,
    SandboxEvent,
)
from agentfense.client._events import EventStream

pytestmark = pytest.mark.anyio

RULES = [
    {"pattern": "**", "permission": "write"},
    {"pattern": "**/.env", "permission": "none"},
    {"pattern": "src/locked.txt", "type": "file", "permission": "read"},
]


async def _codebase(client: AsyncSandboxClient) -> str:
    codebase = await client.create_codebase("events", "tester")
    for path, content in {
        "src/app.py": "print('hi')\n",
        "src/locked.txt": "do not remove\n",
        ".env": "SECRET=1\n",
    }.items():
        await client.upload_file(codebase.id, path, content)
    return codebase.id


async def _until(events: EventStream, last: tuple[EventKind, str]) -> list[SandboxEvent]:
    seen: list[SandboxEvent] = []
    with anyio.fail_after(20):
        async for event in events:
            seen.append(event)
            if (event.kind, event.path) == last:
                return seen
    raise AssertionError(f"the stream ended before {last}: {seen}")


@pytest.mark.parametrize("commit", ["auto", "manual"])
async def test_events_say_what_commands_did_and_what_was_refused(
    client: AsyncSandboxClient, endpoint: str, commit: str
) -> None:
    codebase_id = await _codebase(client)
    async with await AsyncSandbox.from_codebase(
        codebase_id, permissions=RULES, preset=None, endpoint=endpoint, commit=commit
    ) as sandbox:
        await sandbox.run("echo before > before.txt")  # (before the watch: not seen)
        async with sandbox.events() as events:
            await sandbox.run(
                "echo x > new.txt; echo y >> src/app.py; echo z >> src/app.py;"
                " mv new.txt moved.txt; rm src/app.py; cat .env; rm src/locked.txt; mkdir d"
            )
            seen = await _until(events, (EventKind.CREATED, "d"))
    shown = [(e.kind, e.path, e.to) for e in seen]
    assert shown == [
        (EventKind.CREATED, "new.txt", ""),
        (EventKind.MODIFIED, "new.txt", ""),
        (EventKind.MODIFIED, "src/app.py", ""),  # (two appends in a row: one event)
        (EventKind.RENAMED, "new.txt", "moved.txt"),
        (EventKind.DELETED, "src/app.py", ""),
        (EventKind.DENIED, ".env", ""),
        (EventKind.DENIED, "src/locked.txt", ""),
        (EventKind.CREATED, "d", ""),
    ], shown
    hidden, locked = seen[5], seen[6]
    assert hidden.operation == "lookup"
    assert "**/.env" in hidden.rule
    assert "none" in hidden.rule
    assert locked.operation == "unlink"
    assert "src/locked.txt" in locked.rule
    assert all(e.time is not None for e in seen)
    assert [e.seq for e in seen] == sorted(e.seq for e in seen)


async def test_a_watcher_too_far_behind_is_told_what_it_lost_and_streams_end_with_the_sandbox(
    client: AsyncSandboxClient,
) -> None:
    codebase_id = await _codebase(client)
    info = await client.create_sandbox(codebase_id, permissions=RULES, start=True)
    async with client.watch_events(info.id) as events:
        command = "mkdir many && cd many && for i in $(seq 3000); do echo > f$i; done"
        assert (await client.exec(info.id, command)).exit_code == 0
        seen = await _until(events, (EventKind.MODIFIED, "many/f3000"))
        assert len(seen) == 6001, "a reader that keeps up misses nothing"
        # One resuming from the first event has fallen behind what the server keeps.
        async with client.watch_events(info.id, after=seen[0].seq) as late:
            lost = await late.__anext__()
            assert (lost.kind, lost.count) == (EventKind.LOST, 6001 - 1 - 1024)
            kept = [await late.__anext__() for _ in range(1024)]
            assert [e.seq for e in kept] == [e.seq for e in seen[-1024:]]
        await client.destroy_sandbox(info.id)
        with anyio.fail_after(20):
            assert [event async for event in events] == []


async def test_resuming_after_a_seq_and_the_most_watches(
    client: AsyncSandboxClient, endpoint: str
) -> None:
    codebase_id = await _codebase(client)
    async with await AsyncSandbox.from_codebase(
        codebase_id, permissions=RULES, preset=None, endpoint=endpoint
    ) as sandbox:
        async with sandbox.events() as events:
            await sandbox.run("echo 1 > one; echo 2 > two")
            seen = await _until(events, (EventKind.MODIFIED, "two"))
        after_one = next(e.seq for e in seen if e.path == "one" and e.kind is EventKind.MODIFIED)
        async with sandbox.events(after=after_one) as resumed:
            again = await _until(resumed, (EventKind.MODIFIED, "two"))
        assert [(e.kind, e.path) for e in again] == [
            (EventKind.CREATED, "two"),
            (EventKind.MODIFIED, "two"),
        ]
    async with await AsyncSandbox.from_codebase(
        codebase_id, permissions=RULES, preset=None, endpoint=endpoint
    ) as sandbox:
        streams = [sandbox.events() for _ in range(17)]
        try:
            for stream in streams[:16]:
                await stream.__aenter__()
            with pytest.raises(ResourceLimitExceededError, match="16 watches"):
                await streams[16].__aenter__()
        finally:
            for stream in streams:
                await stream.aclose()


def test_the_sync_mirror_watches_too(endpoint: str) -> None:
    with SandboxClient(endpoint) as client:
        codebase = client.create_codebase("events-sync", "tester")
        client.upload_file(codebase.id, "src/app.py", "print('hi')\n")
        with (
            Sandbox.from_codebase(
                codebase.id, permissions=RULES, preset=None, endpoint=endpoint
            ) as sandbox,
            sandbox.events() as events,
        ):
            sandbox.run("rm src/app.py")
            event = next(events)
        assert (event.kind, event.path) == (EventKind.DELETED, "src/app.py")
