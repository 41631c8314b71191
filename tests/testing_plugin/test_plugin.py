"""The pytest plugin (``agentfense.testing.plugin``) in real pytest sessions: its fixtures
under pytest-trio, under anyio's plugin (asyncio and trio), and as plain sync fixtures, on a
real server; every sandbox they make is gone when the test is."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from agentfense import AsyncSandbox, AsyncSandboxClient, Sandbox
from agentfense.testing import ServerProcess, start_server_process
from agentfense.testing.plugin import _NOT_OPTIONS

from .conftest import ROOT, Pytester, left_on

# One body for both async plugins: {mark} is the test's marker. The last test fails on
# purpose: its sandbox must go all the same.
ASYNC_TESTS = """
import os
import pytest
import sniffio

pytestmark = {mark}


def record(sandbox):
    with open(os.environ["RECORD"], "a") as ids:
        ids.write(sandbox.id + "\\n")


async def test_a_sandbox_on_the_default_project(agentfense_sandbox, {backend_arg}):
    record(agentfense_sandbox)
    assert sniffio.current_async_library() == {expected_library}
    result = await agentfense_sandbox.run("ls")
    assert result.stdout == "README.md\\n"


async def test_the_default_preset_is_the_sdks(agentfense_sandbox, {backend_arg}):
    record(agentfense_sandbox)
    result = await agentfense_sandbox.run("cat README.md")
    assert result.exit_code != 0  # view-only: listed, not readable


@pytest.mark.agentfense(preset="read-only")
async def test_the_marker_chooses_the_preset(agentfense_sandbox, {backend_arg}):
    record(agentfense_sandbox)
    result = await agentfense_sandbox.run("cat README.md")
    assert result.stdout == "# a project for agentfense_sandbox\\n"


async def test_a_failing_test_still_loses_its_sandbox(agentfense_sandbox, {backend_arg}):
    record(agentfense_sandbox)
    assert False, "failed on purpose"
"""


def _async_tests(mark: str, backend_arg: str, expected_library: str) -> str:
    return ASYNC_TESTS.format(mark=mark, backend_arg=backend_arg, expected_library=expected_library)


def test_under_pytest_trio(pytester_on_server: Pytester, server: ServerProcess) -> None:
    pytester_on_server.write("test_agent.py", _async_tests("pytest.mark.trio", "nursery", "'trio'"))
    session = pytester_on_server.run("-p", "pytest_trio.plugin")
    assert session.code == 1, session.output
    assert "1 failed, 3 passed" in session.output, session.output
    assert "failed on purpose" in session.output
    assert len(set(session.sandboxes)) == 4
    assert left_on(server, session.sandboxes) == []


def test_under_anyios_plugin_on_both_backends(
    pytester_on_server: Pytester, server: ServerProcess
) -> None:
    pytester_on_server.write(
        "conftest.py",
        """
        import pytest

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param
        """,
    )
    pytester_on_server.write(
        "test_agent.py", _async_tests("pytest.mark.anyio", "anyio_backend", "anyio_backend")
    )
    session = pytester_on_server.run("-p", "anyio.pytest_plugin")
    assert session.code == 1, session.output
    assert "2 failed, 6 passed" in session.output, session.output
    assert len(set(session.sandboxes)) == 8
    assert left_on(server, session.sandboxes) == []


def test_the_sync_fixture_and_a_project_of_the_tests_own(
    pytester_on_server: Pytester, server: ServerProcess
) -> None:
    pytester_on_server.write(
        "test_agent.py",
        """
        import os
        import pytest

        @pytest.fixture
        def agentfense_project(tmp_path):
            (tmp_path / "mine").mkdir()
            (tmp_path / "mine" / "notes.txt").write_text("ours\\n")
            return tmp_path / "mine"

        @pytest.mark.agentfense(preset="full-access")
        def test_writes(agentfense_sync_sandbox, agentfense_project):
            with open(os.environ["RECORD"], "a") as ids:
                ids.write(agentfense_sync_sandbox.id + "\\n")
            result = agentfense_sync_sandbox.run("cat notes.txt && echo more >> notes.txt")
            assert result.stdout == "ours\\n"
            assert agentfense_sync_sandbox.read_file("/workspace/notes.txt") == "ours\\nmore\\n"
        """,
    )
    session = pytester_on_server.run()
    assert session.code == 0, session.output
    assert "1 passed" in session.output
    assert len(session.sandboxes) == 1
    assert left_on(server, session.sandboxes) == []


def test_a_marker_cannot_set_what_the_fixtures_decide(pytester_on_server: Pytester) -> None:
    pytester_on_server.write(
        "test_agent.py",
        """
        import pytest

        @pytest.mark.agentfense(endpoint="localhost:1")
        def test_elsewhere(agentfense_sync_sandbox):
            pass

        @pytest.mark.agentfense("read-only")
        def test_positional(agentfense_sync_sandbox):
            pass

        @pytest.mark.agentfense(api_key="a-key-of-the-tests-own", tls=None)
        def test_connection(agentfense_sync_sandbox):
            pass
        """,
    )
    session = pytester_on_server.run()
    assert session.code == 1, session.output
    assert "@pytest.mark.agentfense cannot set endpoint" in session.output
    assert "takes keyword arguments only, not ('read-only',)" in session.output
    assert "@pytest.mark.agentfense cannot set api_key, tls: " in session.output
    assert "AGENTFENSE_API_KEY" in session.output
    assert "3 errors" in session.output


@pytest.mark.parametrize("from_local", [AsyncSandbox.from_local, Sandbox.from_local])
def test_the_marker_cannot_set_any_connection_setting_of_from_local(
    from_local: Callable[..., object],
) -> None:
    """What ``from_local`` passes on to the client (where and how to connect) belongs to
    the endpoint fixture and the environment, not to a sandbox option of one test."""
    connection = set(inspect.signature(AsyncSandboxClient).parameters)
    accepted = set(inspect.signature(from_local).parameters)
    assert {"endpoint", "secure", "tls", "api_key"} <= connection & accepted
    assert connection & accepted <= _NOT_OPTIONS
    assert "path" in _NOT_OPTIONS


def test_without_the_variable_a_throw_away_server_is_started_and_stopped(tmp_path: Path) -> None:
    pytester = Pytester(tmp_path, endpoint=None)
    pytester.write(
        "test_agent.py",
        """
        import os
        import pytest

        @pytest.mark.agentfense(preset="read-only")
        def test_uses_its_own_server(
            agentfense_server, agentfense_endpoint, agentfense_sync_sandbox
        ):
            assert agentfense_endpoint == agentfense_server.endpoint
            assert agentfense_endpoint.startswith("unix:")
            with open(os.environ["RECORD"], "a") as out:
                out.write(f"{agentfense_server.process.pid}\\n")
            assert agentfense_sync_sandbox.run("cat README.md").exit_code == 0
        """,
    )
    session = pytester.run(env={"AGENTFENSE_ENDPOINT": ""})  # empty: as unset
    assert session.code == 0, session.output
    assert "1 passed" in session.output
    assert "error" not in session.output.lower()
    [pid] = session.sandboxes
    assert not Path(f"/proc/{pid}").exists(), "the session's server outlived it"


def test_a_session_that_asks_for_no_fixture_starts_no_server_and_imports_no_sdk(
    tmp_path: Path,
) -> None:
    pytester = Pytester(tmp_path, endpoint=None)
    pytester.write(
        "test_plain.py",
        """
        import os
        import sys
        from pathlib import Path

        def test_nothing_was_started_nor_imported():
            mine = str(os.getpid())
            children = [
                p for p in Path("/proc").iterdir()
                if p.name.isdigit() and (p / "stat").exists()
                and (p / "stat").read_text().rpartition(")")[2].split()[1] == mine
            ]
            assert children == []
            sdk = ("agentfense.server", "agentfense.client", "agentfense.sync", "grpclib")
            assert [m for m in sys.modules if m.startswith(sdk)] == []
        """,
    )
    session = pytester.run()
    assert session.code == 0, session.output
    assert "1 passed" in session.output


def test_the_entry_point_loads_the_plugin_beside_both_async_plugins(
    pytester_on_server: Pytester, tmp_path: Path, server: ServerProcess
) -> None:
    """As installed: pytest finds the plugin through the ``pytest11`` entry point that
    pyproject.toml declares (a distribution's metadata made from it), next to pytest-trio's
    and anyio's, each plugin taking only its own tests."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]["pytest11"]
    assert entry_points == {"agentfense": "agentfense.testing.plugin"}
    assert any(need.startswith("pytest-trio") for need in project["optional-dependencies"]["dev"])
    metadata = tmp_path / "site" / "agentfense_probe-0.dist-info"
    metadata.mkdir(parents=True)
    (metadata / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: agentfense-probe\nVersion: 0\n"
    )
    (metadata / "entry_points.txt").write_text(
        "[pytest11]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    )
    pytester_on_server.write(
        "test_agent.py",
        """
        import os
        import pytest
        import sniffio

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        def record(sandbox):
            with open(os.environ["RECORD"], "a") as ids:
                ids.write(sandbox.id + "\\n")

        @pytest.mark.trio
        async def test_trio(agentfense_sandbox):
            record(agentfense_sandbox)
            assert sniffio.current_async_library() == "trio"
            assert (await agentfense_sandbox.run("ls")).stdout == "README.md\\n"

        @pytest.mark.anyio
        async def test_anyio(agentfense_sandbox):
            record(agentfense_sandbox)
            assert sniffio.current_async_library() == "asyncio"
            assert (await agentfense_sandbox.run("ls")).stdout == "README.md\\n"
        """,
    )
    site = str(tmp_path / "site")
    session = pytester_on_server.run(
        autoload=True,
        env={"PYTHONPATH": os.pathsep.join([site, str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    assert session.code == 0, session.output
    assert "2 passed" in session.output
    assert left_on(server, session.sandboxes) == []


def test_importing_the_plugin_imports_no_server_module() -> None:
    """Every pytest session imports the plugin: nothing of the server or its filesystem."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, agentfense.testing.plugin\n"
            "server = ('agentfense.server', 'agentfense.fs')\n"
            "print(sorted(m for m in sys.modules if m.startswith(server)))",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout == "[]\n"


def test_the_server_is_a_context_manager_that_stops_it(tmp_path: Path) -> None:
    with start_server_process(tmp_path) as server:
        assert server.process.poll() is None
    assert server.process.returncode == 0
    assert not server.state_dir.exists()


def test_a_server_that_did_not_exit_cleanly_is_reported(tmp_path: Path) -> None:
    def killed_inside() -> None:
        with start_server_process(tmp_path) as server:
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()

    with pytest.raises(RuntimeError, match="exited with code -9"):
        killed_inside()
