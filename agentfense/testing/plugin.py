"""pytest fixtures for testing code that drives AgentFense sandboxes (``docs/testing.md``).

Registered through the ``pytest11`` entry point ``agentfense``: installed, the fixtures are
there in every pytest session, and cost nothing until a test asks for one (no autouse
fixture; the SDK and the server helpers are imported by the fixtures, not here).

- ``agentfense_server`` (session): a throw-away ``agentfense serve`` on a private unix socket.
- ``agentfense_endpoint`` (session): ``$AGENTFENSE_ENDPOINT`` if set, else that server's.
- ``agentfense_project`` (function): the directory uploaded for each sandbox; override it.
- ``agentfense_sandbox`` (function, async): an ``AsyncSandbox`` on the project, destroyed
  after the test; under pytest-trio (``@pytest.mark.trio``) or anyio's plugin
  (``@pytest.mark.anyio``).
- ``agentfense_sync_sandbox`` (function): the same as a blocking ``Sandbox``, for plain tests.

``@pytest.mark.agentfense(preset=..., permissions=..., ...)`` passes its keywords to
``from_local`` for the sandboxes of that test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from agentfense import AsyncSandbox, Sandbox
    from agentfense.testing import ServerProcess

ENDPOINT_VARIABLE = "AGENTFENSE_ENDPOINT"
MARKER = "agentfense"
# What the fixtures decide, so a marker may not say it: the project, and the connection to the
# server (its endpoint, TLS and API key: the endpoint fixture's and the environment's).
_NOT_OPTIONS = frozenset({"path", "endpoint", "secure", "tls", "api_key"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): keyword arguments of AsyncSandbox.from_local (preset, "
        "permissions, runtime, image, resources, ...) for the agentfense_sandbox and "
        "agentfense_sync_sandbox fixtures of this test",
    )


@pytest.fixture(scope="session")
def agentfense_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real ``agentfense serve`` for the test session, on a private unix socket; stopped at
    the end of the session, which fails if the server did not exit cleanly."""
    from agentfense.testing import start_server_process

    with start_server_process(tmp_path_factory.mktemp("agentfense-server")) as server:
        yield server


@pytest.fixture(scope="session")
def agentfense_endpoint(request: pytest.FixtureRequest) -> str:
    """The server the sandboxes live on: ``$AGENTFENSE_ENDPOINT`` (an empty one is unset),
    else a throw-away one (``agentfense_server``), started only when needed."""
    if os.environ.get(ENDPOINT_VARIABLE, ""):
        from agentfense.client._environment import endpoint_or_configured

        return endpoint_or_configured(None)  # (a malformed one refused, the variable named)
    server: ServerProcess = request.getfixturevalue("agentfense_server")
    return server.endpoint


@pytest.fixture
def agentfense_project(tmp_path: Path) -> Path:
    """The directory each sandbox of a test is made from (uploaded anew for each sandbox).

    This default is a tiny project (a README.md) in the test's temporary directory: override
    the fixture (in a conftest.py, a module or a class) to return your own, or parametrize
    it."""
    root = tmp_path / "agentfense-project"
    root.mkdir()
    (root / "README.md").write_text("# a project for agentfense_sandbox\n")
    return root


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The keywords of the test's ``agentfense`` markers (the closest wins per keyword)."""
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(MARKER))):
        if marker.args:
            pytest.fail(
                f"@pytest.mark.{MARKER} takes keyword arguments only, not {marker.args!r}",
                pytrace=False,
            )
        options.update(marker.kwargs)
    reserved = sorted(_NOT_OPTIONS & options.keys())
    if reserved:
        pytest.fail(
            f"@pytest.mark.{MARKER} cannot set {', '.join(reserved)}: override the "
            "agentfense_project or agentfense_endpoint fixture, or set AGENTFENSE_ENDPOINT "
            "(and AGENTFENSE_API_KEY, AGENTFENSE_TLS_CA, AGENTFENSE_TLS_CLIENT_CERT, "
            "AGENTFENSE_TLS_CLIENT_KEY for the connection)",
            pytrace=False,
        )
    return options


@pytest.fixture
async def agentfense_sandbox(
    request: pytest.FixtureRequest, agentfense_endpoint: str, agentfense_project: Path
) -> AsyncIterator[AsyncSandbox]:
    """A started ``AsyncSandbox`` on ``agentfense_project``; destroyed (with its codebase)
    after the test, whatever the test did."""
    from agentfense import AsyncSandbox

    options = _options(request)
    sandbox = await AsyncSandbox.from_local(
        agentfense_project, endpoint=agentfense_endpoint, **options
    )
    async with sandbox:
        yield sandbox


@pytest.fixture
def agentfense_sync_sandbox(
    request: pytest.FixtureRequest, agentfense_endpoint: str, agentfense_project: Path
) -> Iterator[Sandbox]:
    """The blocking twin of ``agentfense_sandbox``: a started ``Sandbox`` for plain tests."""
    from agentfense import Sandbox

    options = _options(request)
    with Sandbox.from_local(agentfense_project, endpoint=agentfense_endpoint, **options) as sandbox:
        yield sandbox
