"""The client's RPC table: true to the generated services, and what makes misuse a mypy error."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from grpclib.const import Cardinality

from agentfense._proto.sandbox import v1 as pb
from agentfense.client import _rpcs as rpcs

ROOT = Path(__file__).resolve().parents[2]
_CARDINALITY = {
    rpcs.Unary: Cardinality.UNARY_UNARY,
    rpcs.ServerStream: Cardinality.UNARY_STREAM,
    rpcs.ClientStream: Cardinality.STREAM_UNARY,
}


def test_the_table_is_the_generated_services() -> None:
    generated = {
        path: (handler.cardinality, handler.request_type, handler.reply_type)
        for service in (pb.CodebaseServiceBase(), pb.SandboxServiceBase())
        for path, handler in service.__mapping__().items()
    }
    table = {
        rpc.path: (_CARDINALITY[type(rpc)], rpc.request, rpc.reply)
        for rpc in vars(rpcs).values()
        if type(rpc) in _CARDINALITY
    }
    assert table == generated


_MISUSE = """
from agentfense._proto.sandbox import v1 as pb
from agentfense import AsyncSandboxClient
from agentfense.client import _rpcs as rpcs

async def misuse(client: AsyncSandboxClient) -> None:
    await client._unary(rpcs.EXEC, pb.GetSandboxRequest())  # line 7: the wrong request
    sandbox: pb.Sandbox = await client._unary(rpcs.EXEC, pb.ExecRequest())  # 8: the wrong reply
    async with client._server_stream(rpcs.EXEC, pb.ExecRequest()):  # 9: unary as a stream
        pass
    result: pb.ExecResult = await client._unary(rpcs.EXEC, pb.ExecRequest())  # 11: right
    async with client._server_stream(rpcs.EXEC_STREAM, pb.ExecRequest()) as outputs:
        async for output in outputs:
            data: bytes = output.data  # 14: a reply's field, typed
"""


def test_mypy_refuses_a_wrong_request_reply_or_cardinality() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "-c", textwrap.dedent(_MISUSE)],
        cwd=ROOT,  # the project's mypy configuration
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    assert [int(line.split(":")[1]) for line in errors] == [7, 8, 9], checked.stdout
    assert 'type parameter "Req"' in errors[0]  # no request type fits both
    assert 'expected "Unary[ExecRequest, Sandbox]"' in errors[1]
    assert 'expected "ServerStream[' in errors[2]
