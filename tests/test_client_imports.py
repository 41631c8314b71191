"""A client-only install (``pip install agentfense-sandbox``): the SDK imports and works
without the server extra or trio, and what serves says at once that it needs the extra.

Each test runs Python in a child process where the server extra's modules (and trio) cannot
be imported, as in an environment that never installed them (tests/test_install.py does the
same from a real wheel in a fresh virtualenv).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from agentfense._extras import DISTRIBUTION, SERVER_INSTALL, SERVER_MODULES

ROOT = Path(__file__).parent.parent
BLOCKED = (*SERVER_MODULES.values(), "trio")


def _without_extras(
    code: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` where the server extra's modules and trio are not importable."""
    prelude = f"import sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFENSE_")}
    return subprocess.run(
        [sys.executable, "-c", prelude + code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


CLI = "from agentfense.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def test_the_server_extra_in_pyproject_is_what_serve_checks_for() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    declared = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["server"]
    }
    assert declared == set(SERVER_MODULES)
    assert SERVER_INSTALL == "pip install 'agentfense-sandbox[server]'"


def test_the_client_imports_and_loads_nothing_of_the_server() -> None:
    done = _without_extras(
        "import agentfense\n"
        "from agentfense import AsyncSandbox, AsyncSandboxClient, Sandbox, SandboxClient\n"
        "print(agentfense.__version__)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('agentfense.'))))\n"
    )
    assert done.returncode == 0, done.stderr
    version, loaded = done.stdout.splitlines()
    assert version == __import__("agentfense").__version__
    server_side = [
        m
        for m in loaded.split()
        if m.split(".")[1] in ("server", "runtimes", "fs", "testing", "cli")
    ]
    assert server_side == []


def test_serve_without_the_server_extra_fails_at_once_naming_the_install(tmp_path: Path) -> None:
    sock = tmp_path / "server.sock"
    started = time.monotonic()
    done = _without_extras(
        CLI, "serve", "--listen", f"unix:{sock}", "--state-dir", str(tmp_path / "state")
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 125
    assert done.stderr.splitlines() == [
        "agentfense serve: serving needs the server extra, and docker and prometheus-client are "
        "not installed: "
        "pip install 'agentfense-sandbox[server]'"
    ]
    assert not sock.exists()
    assert not (tmp_path / "state").exists()


def test_doctor_without_the_server_extra_fails_and_says_how_to_install_it() -> None:
    done = _without_extras(CLI, "doctor")
    assert done.returncode == 1, done.stdout
    lines = done.stdout.splitlines()
    extra = lines.index(
        "[FAIL] server extra: not installed: docker, prometheus-client (a client-only install "
        "cannot serve)"
    )
    assert lines[extra + 1].strip() == "fix: pip install 'agentfense-sandbox[server]'"
    assert lines[-1].startswith("this machine cannot serve sandboxes yet")
    # the Docker check says the package is missing, not that no engine answers
    assert "[warn] docker: the docker package is missing" in lines


def test_run_without_an_endpoint_needs_the_server_extra_for_its_embedded_server(
    tmp_path: Path,
) -> None:
    (tmp_path / "project").mkdir()
    done = _without_extras(CLI, "run", "project", "--", "true", cwd=tmp_path)
    assert done.returncode == 125
    assert done.stderr.splitlines() == [
        "agentfense run: without --endpoint or AGENTFENSE_ENDPOINT, run embeds a server; "
        "serving needs the server extra, and docker and prometheus-client are not installed: "
        "pip install 'agentfense-sandbox[server]'"
    ]
