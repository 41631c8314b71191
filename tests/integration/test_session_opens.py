"""Opening sessions, on Docker (busybox: no bash) and on bwrap: an open succeeds, or fails
with its real reason.

Each session owns the write end of its shell's script pipe. A session closed more than once
(destroyed, then its shell's end noticed) closed that descriptor number each time; between
the two, the number had gone to another session's pipe or socket (or one of the server's
connections), which the second close cut: an open failed with "session … is closed", its
shell never answered ("did not start"), or a reader found its descriptor taken. Nothing one
session does closes another's.

A shell that ends before it reads its driver is reported as such (it was a bare "is
closed", or INTERNAL when the write failed inside the command's task group).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import anyio
import docker
import pytest

from agentfense import AsyncSandbox, RuntimeType, SessionClosedError
from agentfense.testing import ServerProcess

pytestmark = pytest.mark.anyio

BUSYBOX = "agentfense/busybox:latest"
WORKERS = 4  # sessions opening and closing at once


@pytest.fixture
def anyio_backend() -> str:
    """The race is the server's: one client backend is enough."""
    return "asyncio"


@pytest.fixture(scope="module")
def busybox_image() -> str:
    host = os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"
    api = docker.APIClient(base_url=host, version="auto")
    try:
        api.inspect_image(BUSYBOX)  # type: ignore[no-untyped-call]  # (unannotated in types-docker)
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"this test needs dockerd with the image {BUSYBOX} (DOCKER_HOST={host!r}): "
            f"run scripts/dockerd.sh start and scripts/docker-images.sh ({exc})"
        )
    finally:
        api.close()
    return BUSYBOX


async def _churn(sandbox: AsyncSandbox, count: int) -> list[str]:
    """Open ``count`` sessions, ``WORKERS`` at a time, each running one command before it is
    closed; what went wrong with each that failed."""
    failures: list[str] = []
    limiter = anyio.Semaphore(WORKERS)

    async def one(number: int) -> None:
        async with limiter:
            try:
                async with await sandbox.session() as session:
                    result = await session.exec(f"echo {number}")
                    if (result.stdout, result.exit_code) != (f"{number}\n", 0):
                        failures.append(f"session {number}: {result}")
            except Exception as exc:
                failures.append(f"session {number}: {exc!r}")

    async with anyio.create_task_group() as tg:
        for number in range(count):
            tg.start_soon(one, number)
    return failures


def _new_errors(server: ServerProcess, since: int) -> list[str]:
    """The server's ERROR lines (a background task that failed, an application error)
    logged after offset ``since``."""
    return [line for line in server.log()[since:].splitlines() if " ERROR " in line]


async def test_docker_busybox_sessions_open_and_close_many_at_once(
    server: ServerProcess, project: Path, busybox_image: str
) -> None:
    async with await AsyncSandbox.from_local(
        project, endpoint=server.endpoint, runtime=RuntimeType.DOCKER, image=busybox_image
    ) as sandbox:
        since = len(server.log())
        failures = await _churn(sandbox, 80)
        assert failures == []
        assert _new_errors(server, since) == []


@pytest.mark.bwrap
async def test_bwrap_sessions_open_and_close_many_at_once(
    server: ServerProcess, project: Path
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=server.endpoint) as sandbox:
        since = len(server.log())
        failures = await _churn(sandbox, 120)
        assert failures == []
        assert _new_errors(server, since) == []


async def _open_failures(sandbox: AsyncSandbox, shell: str, count: int) -> list[str]:
    """What each of ``count`` opens of ``shell`` raised (one after another)."""
    said = []
    for _ in range(count):
        try:
            await sandbox.session(shell=shell)
        except SessionClosedError as exc:
            said.append(re.sub(r"^session ses_[0-9a-f]+:? ", "", str(exc)))
        except Exception as exc:
            said.append(repr(exc))
        else:
            said.append("opened")
    return said


async def test_a_docker_shell_that_ends_at_once_is_reported_so(
    server: ServerProcess, project: Path, busybox_image: str
) -> None:
    async with await AsyncSandbox.from_local(
        project, endpoint=server.endpoint, runtime=RuntimeType.DOCKER, image=busybox_image
    ) as sandbox:
        said = await _open_failures(sandbox, "false", 10)
    assert said == ["the shell 'false' did not start: it ended at once, with exit code 1"] * 10


@pytest.mark.bwrap
async def test_a_bwrap_shell_that_ends_at_once_is_reported_so(
    server: ServerProcess, project: Path
) -> None:
    async with await AsyncSandbox.from_local(project, endpoint=server.endpoint) as sandbox:
        said = await _open_failures(sandbox, "false", 30)
    assert said == ["the shell 'false' did not start: it ended at once, with exit code 1"] * 30
