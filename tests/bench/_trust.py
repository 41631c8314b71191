"""What issue 12's trust costs a call, all of it at once: ``run("true")`` (on both backends)
and one unary RPC against a server with ``auth = "token"`` AND TLS (a certificate of a test
CA), and, interleaved in the same run, a server with ``auth = "none"`` over plain TCP (the
client sending no token). Both servers are this build's, on loopback TCP, of their own."""

from __future__ import annotations

from pathlib import Path

import anyio

from agentfense import AsyncSandbox

from ._common import INFORMATIVE, Sizes, attempt, error_rows, progress, row
from ._ours import PRESET, get_sandbox, run_true
from ._stats import Row, Target
from ._timing import interleaved
from ._tls import Servers, tls_servers

TRUST_TARGET = Target(max_ratio=1.1)  # issue 12: auth and TLS on against off, at most 1.1x
RUN = 'run("true"), auth token + TLS'
UNARY = "get_sandbox RPC, auth token + TLS"
OFF = "auth none, plain TCP"  # the baseline's side
UNARY_BACKEND = "asyncio"  # (one unary row, informative)


async def _measure(
    servers: Servers, project: Path, sizes: Sizes, reference: list[float], backend: str
) -> list[Row]:
    async with (
        await AsyncSandbox.from_local(
            project, preset=PRESET, endpoint=servers.secure, tls=servers.tls
        ) as guarded,
        await AsyncSandbox.from_local(
            project, preset=PRESET, endpoint=servers.plain, api_key=""
        ) as unguarded,
    ):
        run_result = await attempt(
            f"{backend}: run('true') with auth token and TLS vs auth none over plain TCP",
            interleaved(
                run_true(guarded),
                run_true(unguarded),
                n_ours=sizes.exec,
                n_base=sizes.exec,
                warmup=sizes.warmup,
            ),
            reference,
        )
        rows = [row(RUN, backend, run_result, f'run("true"), {OFF}', TRUST_TARGET)]
        if backend == UNARY_BACKEND:
            unary_result = await attempt(
                f"{backend}: get_sandbox RPC with auth token and TLS vs auth none over plain TCP",
                interleaved(
                    get_sandbox(guarded),
                    get_sandbox(unguarded),
                    n_ours=sizes.unary,
                    n_base=sizes.unary,
                    warmup=sizes.warmup * 5,
                ),
                reference,
            )
            rows.append(row(UNARY, backend, unary_result, f"get_sandbox, {OFF}", INFORMATIVE))
    return rows


def trust_suite(work: Path, sizes: Sizes, reference: list[float]) -> list[Row]:
    """Auth and TLS on against both off, on two servers of their own."""
    progress("starting a server with auth token and TLS, and one with auth none, on 127.0.0.1")
    rows: list[Row] = []
    try:
        with tls_servers(work, name="trust", plain={"auth": "none"}) as servers:
            for backend in ("asyncio", "trio"):
                try:
                    project = work / "project-small"
                    measure = (servers, project, sizes, reference, backend)
                    rows += anyio.run(_measure, *measure, backend=backend)
                except Exception as exc:  # (opening a sandbox failed: its rows say so)
                    progress(f"{backend}: {type(exc).__name__}: {exc}")
                    names = [RUN, UNARY] if backend == UNARY_BACKEND else [RUN]
                    rows += error_rows(names, backend, exc)
    except RuntimeError as exc:  # (a server did not start, or did not exit cleanly)
        progress(str(exc))
        return error_rows([RUN, UNARY], "-", exc)
    return rows
