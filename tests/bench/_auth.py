"""What authentication costs a call: ``run("true")`` and one unary RPC against the suite's
server (``auth = "token"``, the default: the SDK sends the local owner's token, the server
checks it) and, interleaved in the same run, a server of its own with ``auth = "none"``."""

from __future__ import annotations

from pathlib import Path

from agentfense.testing import start_server_process

from ._common import INFORMATIVE, Sizes, attempt, error_rows, progress, row
from ._ours import get_sandbox, open_sandbox, run_true
from ._stats import Row, Target
from ._timing import interleaved

AUTH_TARGET = Target(max_ratio=1.1)
BACKEND = "asyncio"


async def auth_suite(endpoint: str, work: Path, sizes: Sizes, reference: list[float]) -> list[Row]:
    names = ['run("true"), auth token', "get_sandbox RPC, auth token"]
    (work / "server-auth-none").mkdir()
    try:
        open_server = start_server_process(work / "server-auth-none", settings={"auth": "none"})
    except RuntimeError as exc:
        progress(str(exc))
        return error_rows(names, BACKEND, exc)
    project = work / "project-small"
    try:
        async with (
            await open_sandbox(endpoint, project) as checked,
            await open_sandbox(open_server.endpoint, project) as unchecked,
        ):
            run_result = await attempt(
                "run('true') with auth token vs auth none",
                interleaved(
                    run_true(checked),
                    run_true(unchecked),
                    n_ours=sizes.exec,
                    n_base=sizes.exec,
                    warmup=sizes.warmup,
                ),
                reference,
            )
            unary_result = await attempt(
                "get_sandbox RPC with auth token vs auth none",
                interleaved(
                    get_sandbox(checked),
                    get_sandbox(unchecked),
                    n_ours=sizes.unary,
                    n_base=sizes.unary,
                    warmup=sizes.warmup * 5,
                ),
                reference,
            )
    finally:
        open_server.stop()
    return [
        row(names[0], BACKEND, run_result, 'run("true"), auth none', AUTH_TARGET),
        row(names[1], BACKEND, unary_result, "get_sandbox, auth none", INFORMATIVE),
    ]
