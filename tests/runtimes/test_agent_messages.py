"""The server's side of the agent channel (no sandbox): every message survives encode and
decode unchanged, in the agent's own wire format, and a reply that is not what the agent
sends is refused with one typed error; the connection then hangs up on the agent instead of
acting on it, and what was waiting for it learns the sandbox stopped."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfense import _seqpacket
from agentfense._json_messages import MAX_INT, MessageError
from agentfense.runtimes import _agent_messages as messages
from agentfense.runtimes._agent_client import AgentConnection
from agentfense.runtimes.base import CommandSpec, RuntimeError_

ids = st.integers(0, MAX_INT)
pids = st.integers(1, messages.MAX_PID)
requests = st.one_of(
    st.builds(
        messages.Spawn,
        id=ids,
        argv=st.lists(st.text(), min_size=1).map(tuple),
        env=st.dictionaries(st.text(), st.text()),
        cwd=st.text(),
    ),
    st.builds(messages.Kill, id=ids, signal=st.integers(1, messages.MAX_SIGNAL)),
)
replies = st.one_of(
    st.builds(messages.Ready, pid=pids),
    st.builds(messages.Started, id=ids, pid=pids),
    st.builds(
        messages.Refused,
        id=ids,
        error=st.text(),
        errno=st.none() | st.integers(0, 4095),
        workdir=st.booleans(),
    ),
    st.builds(messages.Exited, id=ids, code=st.integers(0, messages.MAX_EXIT)),
)


@settings(deadline=None)  # a shared 2-core machine: time is no property here
@given(requests)
def test_every_request_round_trips(request: messages.Spawn | messages.Kill) -> None:
    assert type(request).decode(request.encode()) == request


@settings(deadline=None)  # a shared 2-core machine: time is no property here
@given(replies)
def test_every_reply_round_trips(reply: messages.Reply) -> None:
    assert messages.decode_reply(reply.encode()) == reply
    assert type(reply).decode(reply.encode()) == reply


def test_the_wire_format_is_the_agents() -> None:
    """What ``_agent.py`` reads of a request and writes as a reply (``json.dumps`` with its
    default separators), field for field."""
    spawn = messages.Spawn(4, ("sh", "-c", "echo é"), {"A": "1"}, "/workspace")
    assert json.loads(spawn.encode()) == {
        "op": "spawn",
        "id": 4,
        "argv": ["sh", "-c", "echo é"],
        "env": {"A": "1"},
        "cwd": "/workspace",
    }
    assert json.loads(messages.Kill(4, 9).encode()) == {"op": "kill", "id": 4, "signal": 9}
    for sent, reply in [
        ({"ready": 1}, messages.Ready(1)),
        ({"id": 4, "pid": 17}, messages.Started(4, 17)),
        ({"id": 4, "exit": 137}, messages.Exited(4, 137)),
        (
            {"id": 4, "error": "Resource temporarily unavailable: ", "errno": 11},
            messages.Refused(4, "Resource temporarily unavailable: ", 11),
        ),
        (
            {"id": 4, "error": "No such file or directory: /x", "errno": 2, "field": "workdir"},
            messages.Refused(4, "No such file or directory: /x", 2, workdir=True),
        ),
        ({"id": 4, "error": "odd: ", "errno": None}, messages.Refused(4, "odd: ", None)),
    ]:
        assert messages.decode_reply(json.dumps(sent).encode()) == reply


@pytest.mark.parametrize(
    ("sent", "words"),
    [
        ({"id": 4, "exit": 3.5}, "exit must be an integer from 0 to 255"),
        ({"id": 4, "exit": True}, "exit must be an integer"),
        ({"id": 4, "exit": 256}, "exit must be an integer from 0 to 255"),
        ({"id": "4", "pid": 17}, "id must be an integer"),
        ({"id": 4, "pid": 0}, "pid must be an integer from 1"),
        ({"id": 4}, "not exactly one of error, exit, pid, ready"),
        ({"id": 4, "pid": 17, "exit": 0}, "not exactly one of"),
        ({"id": 4, "pid": 17, "extra": 0}, "unknown fields ['extra']"),
        ({"id": 4, "error": "x", "errno": 2, "field": "argv"}, "field can only be 'workdir'"),
        ({"id": 4, "error": "x"}, "'errno' is missing"),
        ({"ready": "yes"}, "ready must be an integer"),
        ([4, 17], "a JSON list, not an object"),
    ],
)
def test_a_reply_the_agent_never_sends_is_refused(sent: object, words: str) -> None:
    with pytest.raises(MessageError) as caught:
        messages.decode_reply(json.dumps(sent).encode())
    assert words in str(caught.value)


def test_requests_are_checked_as_strictly() -> None:
    with pytest.raises(MessageError, match="op 'kill' is not 'spawn'"):
        messages.Spawn.decode(messages.Kill(1, 9).encode())
    with pytest.raises(MessageError, match="argv must name a program"):
        messages.Spawn.decode(messages.Spawn(1, (), {}, "/").encode())
    with pytest.raises(MessageError, match="env must be an object of strings to strings"):
        messages.Spawn.decode(b'{"op":"spawn","id":1,"argv":["a"],"env":{"A":1},"cwd":"/"}')
    with pytest.raises(MessageError, match="signal must be an integer from 1 to 64"):
        messages.Kill.decode(messages.Kill(1, 0).encode())
    with pytest.raises(MessageError, match="a Started reply where a Exited was due"):
        messages.Exited.decode(messages.Started(1, 2).encode())
    with pytest.raises(MessageError, match="at most 65536 are taken"):
        messages.decode_reply(messages.Refused(1, "x" * messages.MAX_REPLY, 1).encode())


@pytest.fixture
def agent_end() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        yield ours, theirs


@pytest.mark.anyio
@pytest.mark.parametrize(
    "reply",
    [
        b'{"id": 1, "exit": 3.5}',  # (once taken as exit status 3)
        b'{"id": 2, "pid": 17}',  # a command it was never asked to start
        b'{"id": 1, "exit": 0}' + b" " * messages.MAX_REPLY,  # (once cut short, then parsed)
        b"[" * 100_000,
    ],
)
async def test_the_connection_hangs_up_on_a_malformed_reply(
    agent_end: tuple[socket.socket, socket.socket], reply: bytes
) -> None:
    """The agent's end is played here: what it sends the real agent never would."""
    ours, theirs = agent_end
    connection = AgentConnection(ours, None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(connection.run)
        _seqpacket.send(theirs, messages.Ready(1).encode())
        with anyio.fail_after(10):
            await connection.ready.wait()

        async def answer_the_spawn() -> None:
            await anyio.wait_readable(theirs)
            data, fds = _seqpacket.receive(theirs, most=messages.MAX_REQUEST, max_fds=8)
            _seqpacket.close_all(fds)
            assert messages.Spawn.decode(data).argv == ("true",)
            _seqpacket.send(theirs, messages.Started(1, 17).encode())

        tg.start_soon(answer_the_spawn)
        process = await connection.spawn(CommandSpec(("true",), {}, "/"))
        _seqpacket.send(theirs, reply)
        with anyio.fail_after(10):
            assert await process.wait() == 137  # as if the sandbox was stopped
            await connection.closed.wait()
    _seqpacket.close_all([process.stdin_fd, process.stdout_fd, process.stderr_fd])
    assert theirs.recv(10) == b""  # hung up
    with pytest.raises(RuntimeError_, match="the sandbox is not running"):
        await connection.spawn(CommandSpec(("true",), {}, "/"))
