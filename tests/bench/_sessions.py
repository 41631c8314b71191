"""A session's round trip, ``session.exec("true")``, against ``sandbox.run("true")``: the same
command in the same running sandbox, through the persistent shell vs as a new process."""

from __future__ import annotations

from pathlib import Path

from agentfense import AsyncSandbox, AsyncSessionWrapper, SandboxError
from agentfense.errors import StatusCode

from ._ours import open_sandbox, run_true
from ._timing import Step, interleaved

Samples = tuple[list[float], list[float]]


def session_true(session: AsyncSessionWrapper) -> Step:
    """One ``session.exec("true")`` round trip."""

    async def step() -> None:
        result = await session.exec("true")
        if result.exit_code != 0:
            raise RuntimeError(f"'true' exited with {result.exit_code}: {result.stderr!r}")

    return step


async def _open_session(sandbox: AsyncSandbox) -> AsyncSessionWrapper | None:
    """A new session in ``sandbox``, or None when the server does not serve sessions."""
    try:
        return await sandbox.session()
    except SandboxError as exc:
        if exc.code != StatusCode.UNIMPLEMENTED:
            raise
        return None


async def session_vs_run(endpoint: str, project: Path, n: int, warmup: int) -> Samples | None:
    """Samples of ``session.exec("true")`` and ``run("true")``, interleaved in blocks; None
    when the server answers the session RPCs with UNIMPLEMENTED."""
    async with await open_sandbox(endpoint, project) as sandbox:
        session = await _open_session(sandbox)
        if session is None:
            return None
        async with session:
            return await interleaved(
                session_true(session), run_true(sandbox), n_ours=n, n_base=n, warmup=warmup
            )
