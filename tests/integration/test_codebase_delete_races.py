"""Deleting a codebase while a sandbox is being made on it, over a real server: one of the
two wins with a typed answer (the sandbox is made and the delete refused, or the codebase
is gone and the create finds nothing), never an INTERNAL error telling the client the
server's paths, and never a sandbox on a codebase that is gone."""

from __future__ import annotations

import anyio
import pytest

from agentfense import (
    AsyncSandboxClient,
    CodebaseNotFoundError,
    PermissionRule,
    SandboxError,
    SandboxInfo,
)
from agentfense.testing import ServerProcess

pytestmark = pytest.mark.anyio
ROUNDS = 4


async def _race(
    client: AsyncSandboxClient, codebase_id: str
) -> tuple[SandboxInfo | SandboxError, SandboxError | None]:
    """CreateSandbox and DeleteCodebase at once: what each got (None: deleted)."""
    made: list[SandboxInfo | SandboxError] = []
    deleted: list[SandboxError | None] = []

    async def create() -> None:
        try:
            rules = [PermissionRule("**", "write")]
            made.append(await client.create_sandbox(codebase_id, permissions=rules))
        except SandboxError as exc:
            made.append(exc)

    async def delete() -> None:
        try:
            await client.delete_codebase(codebase_id)
            deleted.append(None)
        except SandboxError as exc:
            deleted.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(create)
        tg.start_soon(delete)
    return made[0], deleted[0]


async def test_a_codebase_deleted_while_a_sandbox_is_made_on_it(
    server: ServerProcess, client: AsyncSandboxClient
) -> None:
    for round_ in range(ROUNDS):
        codebase = await client.create_codebase(f"race{round_}")
        await client.upload_file(codebase.id, "a.txt", b"kept\n")
        sandbox, refusal = await _race(client, codebase.id)
        if refusal is None:  # the delete won: the create found nothing
            assert isinstance(sandbox, CodebaseNotFoundError), repr(sandbox)
            assert str(server.state_dir) not in sandbox.message
        else:  # the create won: the delete is refused, the sandbox works on the codebase
            assert refusal.code == 9, repr(refusal)  # FAILED_PRECONDITION: in use
            assert isinstance(sandbox, SandboxInfo), repr(sandbox)
            await client.start_sandbox(sandbox.id)
            result = await client.exec(sandbox.id, "cat a.txt")
            assert (result.exit_code, result.stdout) == (0, "kept\n")
            await client.destroy_sandbox(sandbox.id)
            await client.delete_codebase(codebase.id)
