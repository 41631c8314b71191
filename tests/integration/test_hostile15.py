"""Hostile checks of issue 15 (the first hour): lifecycle log lines, the metrics endpoint,
rule ranking, the test server helper. Real server, real components."""

from __future__ import annotations

import _thread
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentfense import AsyncSandboxClient
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(
        tmp_path_factory.mktemp("hostile15"), settings={"metrics_listen": "127.0.0.1:0"}
    )
    yield running
    assert running.stop() == 0, running.log()


async def test_a_trailing_newline_in_an_owner_does_not_end_the_log_line(
    server: ServerProcess,
) -> None:
    """log_lines promises that no client value can end a line: a value that is plain but for
    one trailing newline ('$' matches before it) went out bare, newline included."""
    async with AsyncSandboxClient(server.endpoint) as client:
        codebase = await client.create_codebase("inj", owner_id="mallory\n")
        await client.delete_codebase(codebase.id)
    with anyio.fail_after(10):
        while f"codebase deleted codebase_id={codebase.id}" not in server.log():  # noqa: ASYNC110
            await anyio.sleep(0.05)
    created = [
        line
        for line in server.log().splitlines()
        if f"codebase created codebase_id={codebase.id} tenant=local owner=" in line
    ]
    assert len(created) == 1, server.log()
    assert created[0].endswith(' owner="mallory\\n" name=inj'), created[0]


def test_an_interrupt_while_the_server_starts_leaves_no_server_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (KeyboardInterrupt) while start_server_process waits for the socket: the child
    server it started must not be left running (the pytest plugin's agentfense_server)."""
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):  # type: ignore[no-untyped-def]
        process = real_popen(*args, **kwargs)
        started.append(process)
        threading.Timer(0.05, _thread.interrupt_main).start()
        return process

    monkeypatch.setattr(subprocess, "Popen", recording_popen)  # (the module the helper uses)
    try:
        server = start_server_process(tmp_path)
    except KeyboardInterrupt:
        pass
    else:  # (the server was faster than the interrupt: not the case under test)
        with pytest.raises(KeyboardInterrupt):
            time.sleep(5)
        server.stop()
        pytest.skip("the server accepted before the interrupt")
    assert len(started) == 1
    try:
        started[0].wait(timeout=30)
    except subprocess.TimeoutExpired:
        started[0].kill()
        started[0].wait()
        pytest.fail("the server started before the interrupt is still running")


def test_doctor_fails_without_fuse_which_every_sandbox_needs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every sandbox's view is a FUSE mount (create_sandbox -> add_view, no fallback): without
    /dev/fuse doctor must not say 'this machine can serve sandboxes' and exit 0."""
    from agentfense.cli._serve import doctor as doctor_command
    from agentfense.server import doctor

    real_exists = Path.exists

    def exists(self: Path, *args: object, **kwargs: object) -> bool:
        return False if str(self) == "/dev/fuse" else real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    checks = {check.name: check for check in doctor.run_checks()}
    assert not checks["FUSE"].ok
    assert checks["FUSE"].required, checks["FUSE"]
    assert doctor_command(None) == 1  # type: ignore[arg-type]
    assert "cannot serve" in capsys.readouterr().out


def test_an_exact_path_rule_raised_above_the_preset_but_outranked_by_your_own_is_warned() -> None:
    """The raised exact-path rules were never checked ('nothing of the preset outranks
    them'), but a rule of the user's own with a higher priority can: the same rules warn
    without a preset and stayed silent with one."""
    from agentfense import PermissionRule, RuleShadowedWarning
    from agentfense.presets import resolve_permissions

    rules = [PermissionRule("**/*.log", "none", priority=200), PermissionRule("debug.log", "read")]
    for preset in (None, "agent-safe"):
        with pytest.warns(RuleShadowedWarning, match=r"'debug.log' \(read\) has no effect"):
            resolve_permissions(preset, rules)


def test_no_doc_installs_the_other_projects_agentfense_distribution() -> None:
    """'pip install agentfense' installs another project (PyPI's 'agentfense' is not this
    one: the distribution is agentfense-sandbox); no install line of the docs may say it."""
    import re

    root = Path(__file__).resolve().parents[2]
    wrong = []
    for doc in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        for number, text in enumerate(doc.read_text().splitlines(), 1):
            for command in re.findall(r"pip install ([^#`]*)", text):
                if re.search(r"(^|\s)['\"]?agentfense(\[|['\"]?(\s|$))", command):
                    wrong.append(f"{doc.relative_to(root)}:{number}: {text.strip()}")
    assert not wrong, wrong


def _state_dir_of(directory: Path) -> Path:
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"agentfense-state-{digest}"


@pytest.mark.parametrize("planted", ["directory", "symlink"])
def test_a_state_dir_planted_by_another_user_is_refused(tmp_path: Path, planted: str) -> None:
    """The helper's state directory is in the shared /tmp under a name anyone can compute
    from the test's directory (the pytest plugin's is /tmp/pytest-of-USER/pytest-N/...): one
    made first by another user (or a link to one) would get the server's codebases, the
    user's project with its secrets included, and let that user plant and swap files."""
    import os

    directory = tmp_path / "victim"
    state = _state_dir_of(directory)
    elsewhere = tmp_path / "mallory-owned"
    try:
        if planted == "directory":
            state.mkdir(mode=0o777)
            os.chown(state, 59999, 59999)
        else:
            elsewhere.mkdir()
            os.chown(elsewhere, 59999, 59999)
            state.symlink_to(elsewhere)
        with pytest.raises(RuntimeError, match="state"):
            start_server_process(directory).stop()
    finally:
        if state.is_symlink():
            state.unlink()
        elif state.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(state)], check=False)


def test_the_cli_names_a_malformed_endpoint_variable_as_the_sdk_does(tmp_path: Path) -> None:
    """A user who never typed 'localhost' is told which variable says it (the SDK says so;
    the CLI passed the variable on as if it were the user's --endpoint)."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFENSE_")}
    env["AGENTFENSE_ENDPOINT"] = "localhost"
    done = subprocess.run(
        [sys.executable, "-m", "agentfense", "ls"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 125, done
    assert "AGENTFENSE_ENDPOINT" in done.stderr, done.stderr


def test_a_directory_named_like_a_server_module_is_not_its_installed_package(
    tmp_path: Path,
) -> None:
    """`python -m agentfense doctor` puts the working directory first on sys.path: in a
    project with a docker/ folder, a client-only install found 'docker' (a namespace package
    of that folder) and said the server extra was installed. (-S: no site-packages, so as a
    client-only install, without docker nor prometheus_client.)"""
    import sys

    extras = Path(__file__).resolve().parents[2] / "agentfense" / "_extras.py"
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM debian\n")
    (tmp_path / "prometheus_client").mkdir()
    program = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('extras', {str(extras)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(module.missing_server_distributions())\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", program],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "['docker', 'prometheus-client']", done


def test_the_plugin_loaded_in_every_pytest_session_does_not_import_the_sdk() -> None:
    """plugin.py: 'cost nothing until a test asks for one (... the SDK and the server helpers
    are imported by the fixtures, not here)'. The pytest11 entry point imports the plugin in
    every pytest session of every project where agentfense-sandbox is installed, and
    importing agentfense.testing.plugin imported the package agentfense, whose __init__
    imported the whole SDK and its transport (grpclib, h2, betterproto): about a second on a
    loaded machine, in each session, used or not. Fixed: the package's __init__ imports each
    public name on first use (tests/test_exports.py)."""
    import sys

    wire = "{'grpclib', 'h2', 'betterproto'}"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, agentfense.testing.plugin\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {wire}))\n"
            "print(sorted(m for m in sys.modules if m.startswith('agentfense.client')))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.splitlines() == ["[]", "[]"], done.stdout
