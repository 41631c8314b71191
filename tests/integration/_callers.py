"""Calling a real server as someone: API tokens made by the CLI, every RPC of both services
(from the generated service definitions), and raw grpclib calls that show what the SDK maps
(the status, the message and the error's kind, as any client receives them)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpclib.const
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from agentfense._error_details import ReasonCodec
from agentfense._proto.sandbox import v1 as pb
from agentfense.testing import ServerProcess


def every_rpc() -> dict[str, grpclib.const.Handler]:
    """Every RPC of both services, from the generated service definitions: a new RPC is in
    this table the day it is generated."""
    return {
        path: handler
        for service in (pb.CodebaseServiceBase(), pb.SandboxServiceBase())
        for path, handler in service.__mapping__().items()
    }


def cli(*words: str) -> subprocess.CompletedProcess[str]:
    """``python -m agentfense WORDS``, with none of this environment's AGENTFENSE_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFENSE_")}
    return subprocess.run(
        [sys.executable, "-m", "agentfense", *words],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def token(server: ServerProcess, tenant: str) -> str:
    """A new API token of ``tenant`` on ``server``, made by the token CLI."""
    made = cli("token", "create", "--tenant", tenant, "--state-dir", str(server.state_dir))
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@dataclass(frozen=True)
class Answer:
    """What one call got back: its reply messages, then its error (None: it ended OK)."""

    replies: list[Any]
    error: GRPCError | None

    def text(self) -> bytes:
        """Every byte the server sent back in messages and in the error's message."""
        message = (self.error.message or "") if self.error else ""
        return b"".join(bytes(reply) for reply in self.replies) + message.encode()


async def raw_call(
    endpoint: str,
    path: str,
    handler: grpclib.const.Handler,
    requests: Sequence[Any],
    *,
    metadata: Mapping[str, str],
    timeout: float = 30,
    most_replies: int | None = None,
) -> Answer:
    """Call ``path`` on the unix socket ``endpoint``, sending ``requests`` (one for a unary
    request, the stream's messages for a client stream) and reading every reply (or the
    first ``most_replies`` of a stream that goes on: then it is cancelled)."""
    channel = Channel(path=endpoint.removeprefix("unix:"), status_details_codec=ReasonCodec())
    replies: list[Any] = []
    try:
        async with channel.request(
            path,
            handler.cardinality,
            handler.request_type,
            handler.reply_type,
            metadata=dict(metadata),
            timeout=timeout,
        ) as stream:
            for index, request in enumerate(requests):
                await stream.send_message(request, end=index == len(requests) - 1)
            while (reply := await stream.recv_message()) is not None:
                replies.append(reply)
                if len(replies) == most_replies:
                    await stream.cancel()
                    return Answer(replies, None)
            await stream.recv_trailing_metadata()
    except GRPCError as exc:
        return Answer(replies, exc)
    finally:
        channel.close()
    return Answer(replies, None)
