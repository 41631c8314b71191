"""Every code sample of the README and the docs site runs as written, against a real server.

The docs' convention: a ```python block is a complete program, run as is with
``AGENTFENSE_ENDPOINT`` naming a live server, in a temporary directory that holds a small
project at ``./project`` (:func:`make_project`). A ```toml block is a server configuration,
checked by the server's own parser. A ```sh block whose lines are all ``agentfense ...``
commands is run with ``bash -euo pipefail`` the same way (those of ``docs/cli.md`` and the
README are run by ``tests/cli/test_docs_cli.py``, with real ids put in for the placeholders).
Other shell lines (installing packages, starting a server on a fixed port, ``pip``, ``nox``)
change the machine or need one of their own, and are not run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration._network_world import serving_mirror

from agentfense.server.config import ServerConfig
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.bwrap

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
MIRROR_PORT = 3141  # docs/network.md's mirror.internal:3141
RUN_ELSEWHERE = {ROOT / "README.md", ROOT / "docs" / "cli.md"}  # tests/cli/test_docs_cli.py


def _blocks(kinds: set[str]) -> list[tuple[Path, int, str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            if m.group(1) in kinds:
                found.append((page, text[: m.start()].count("\n") + 1, m.group(1), m.group(2)))
    return found


def _id(page: Path, line: int) -> str:
    return f"{page.relative_to(ROOT)}:{line}"


def _cli_only(script: str) -> bool:
    """Whether every command of a shell sample is an ``agentfense`` command."""
    commands = [
        line
        for line in script.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return bool(commands) and all(line.startswith("agentfense ") for line in commands)


PROGRAMS = [
    pytest.param(kind, code, id=_id(p, n)) for p, n, kind, code in _blocks({"python", "toml"})
]
SHELL = [
    pytest.param(code, id=_id(p, n))
    for p, n, _, code in _blocks({"sh"})
    if p not in RUN_ELSEWHERE and _cli_only(code)
]


def make_project(root: Path) -> None:
    """``./project``: a README, a module, a secret the presets hide, and a passing unittest."""
    project = root / "project"
    (project / "src").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "README.md").write_text("# sample project\n")
    (project / "src" / "main.py").write_text("print('main')\n")
    (project / ".env").write_text("SECRET=do-not-show\n")
    (project / "tests" / "test_main.py").write_text(
        "import unittest\n\n\n"
        "class MainTest(unittest.TestCase):\n"
        "    def test_arithmetic(self) -> None:\n"
        "        self.assertEqual(6 * 7, 42)\n\n\n"
        'if __name__ == "__main__":\n'
        "    unittest.main()\n"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The docs' server; docs/network.md's package mirror (``mirror.internal``, in its host
    map; it holds ``tinypkg``) is served on 127.0.0.1:3141 meanwhile."""
    with serving_mirror(tmp_path_factory.mktemp("mirror"), MIRROR_PORT):
        running = start_server_process(
            tmp_path_factory.mktemp("docs-server"),
            settings={"network_hosts": "mirror.internal=127.0.0.1"},
        )
        yield running
        assert running.stop() == 0, running.log()


def _environment(server: ServerProcess, tmp_path: Path) -> dict[str, str]:
    """A user's environment (no other AGENTFENSE_* variable) naming the live server, with
    ``agentfense`` on the PATH as this checkout's CLI."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "agentfense"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m agentfense "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFENSE_")}
    env.update(
        AGENTFENSE_ENDPOINT=server.endpoint,
        PATH=f"{bin_dir}:{env['PATH']}",
        PYTHONPATH=str(ROOT),
    )
    return env


def _run(argv: list[str], server: ServerProcess, tmp_path: Path) -> None:
    make_project(tmp_path)
    done = subprocess.run(
        argv,
        cwd=tmp_path,
        env=_environment(server, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"


def test_the_docs_have_samples() -> None:
    assert len(PROGRAMS) >= 30
    assert len(SHELL) >= 1


@pytest.mark.parametrize(("kind", "code"), PROGRAMS)
def test_sample_runs(kind: str, code: str, server: ServerProcess, tmp_path: Path) -> None:
    if kind == "toml":
        data = tomllib.loads(code)
        ServerConfig().with_values(data.get("server", data))
        return
    sample = tmp_path / "sample.py"
    sample.write_text(code)
    _run([sys.executable, str(sample)], server, tmp_path)


@pytest.mark.parametrize("script", SHELL)
def test_shell_sample_runs(script: str, server: ServerProcess, tmp_path: Path) -> None:
    _run(["bash", "-euo", "pipefail", "-c", script], server, tmp_path)


def test_a_sample_that_fails_fails_the_test(server: ServerProcess, tmp_path: Path) -> None:
    """The runner is no rubber stamp: a program that exits non-zero is a failure."""
    with pytest.raises(AssertionError, match="boom"):
        _run([sys.executable, "-c", "raise SystemExit('boom')"], server, tmp_path)
