"""Our side: the SDK against a real server, on anyio (so it runs on asyncio and trio alike)."""

from __future__ import annotations

from pathlib import Path

from agentfense import AsyncSandbox, ExecResult

from ._timing import Step

PRESET = "read-only"


def _check(result: ExecResult) -> None:
    if result.exit_code != 0:
        raise RuntimeError(f"'true' exited with {result.exit_code}: {result.stderr!r}")


def run_true(sandbox: AsyncSandbox) -> Step:
    """One ``sandbox.run("true")`` round trip."""

    async def step() -> None:
        _check(await sandbox.run("true"))

    return step


def get_sandbox(sandbox: AsyncSandbox) -> Step:
    """One unary RPC: ``client.get_sandbox(id)``."""

    async def step() -> None:
        await sandbox.client.get_sandbox(sandbox.id)

    return step


def lifecycle(endpoint: str, project: Path) -> Step:
    """``from_local`` (upload, create, start) + ``run("true")`` + destroy (``async with`` exit)."""

    async def step() -> None:
        async with await AsyncSandbox.from_local(
            project, preset=PRESET, endpoint=endpoint
        ) as sandbox:
            _check(await sandbox.run("true"))

    return step


async def open_sandbox(endpoint: str, project: Path) -> AsyncSandbox:
    """A running read-only sandbox on ``project`` (use it as ``async with``)."""
    return await AsyncSandbox.from_local(project, preset=PRESET, endpoint=endpoint)
