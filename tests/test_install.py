"""A user's install, for real: the wheel built from this tree, ``pip install``-ed from PyPI
into a fresh virtualenv.

The client install pulls exactly the client's dependency closure (no docker, no trio), the
SDK works from it against a real server, ``agentfense --version`` is the one version, and
``agentfense doctor`` there says that serving needs the server extra and how to install it;
``[trio]`` then adds trio and the same program runs under trio.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import agentfense
from agentfense._extras import DISTRIBUTION, SERVER_INSTALL
from agentfense.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "agentfense")

PROGRAM = """\
import sys

import anyio

from agentfense import AsyncSandbox


async def main() -> None:
    async with await AsyncSandbox.from_local(
        "project", preset="read-only", endpoint=sys.argv[1]
    ) as sandbox:
        result = await sandbox.run("cat README.md")
    print(result.exit_code, result.stdout.strip())


anyio.run(main, backend=sys.argv[2])
"""


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``args`` run as a user would: no PYTHONPATH onto this tree, no AGENTFENSE_ setting."""
    env = {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("AGENTFENSE_")
    }
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _ok(*args: str | Path, cwd: Path | None = None) -> str:
    done = _run(*args, cwd=cwd)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done.stdout


def _installed(site: Path) -> dict[str, importlib.metadata.Distribution]:
    return {
        canonicalize_name(d.metadata["Name"]): d
        for d in importlib.metadata.distributions(path=[str(site)])
    }


def _closure(
    names: Iterable[tuple[str, frozenset[str]]],
    installed: dict[str, importlib.metadata.Distribution],
) -> set[str]:
    """The distributions ``names`` (each with its extras) need, themselves included, as their
    metadata says for this interpreter."""
    seen: set[str] = set()
    todo = [(canonicalize_name(n), extras) for n, extras in names]
    while todo:
        name, extras = todo.pop()
        seen.add(name)
        for text in installed[name].requires or []:
            req = Requirement(text)
            wanted = req.marker is None or any(
                req.marker.evaluate({"extra": extra}) for extra in extras | {""}
            )
            dep = canonicalize_name(req.name)
            if wanted and dep not in seen:
                todo.append((dep, frozenset(req.extras)))
    return seen


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server_process(tmp_path_factory.mktemp("install-server"))
    yield running
    assert running.stop() == 0, running.log()


def test_a_client_install_in_a_fresh_venv(tmp_path: Path, server: ServerProcess) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()

    def lap(what: str) -> None:
        nonlocal started
        timings[what] = time.monotonic() - started
        started = time.monotonic()

    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside it
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    _ok(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "wheel", source)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    assert wheel.name == f"agentfense_sandbox-{agentfense.__version__}-py3-none-any.whl"
    licence = f"agentfense_sandbox-{agentfense.__version__}.dist-info/licenses/LICENSE"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(licence) == (ROOT / "LICENSE").read_bytes()
    lap("build the wheel")

    # Without a pip of its own (installing one costs half a minute on a busy machine): ours
    # installs into it (pip --python), as the venv's own would.
    venv = tmp_path / "venv"
    _ok(sys.executable, "-m", "venv", "--without-pip", venv)
    python, cli = venv / "bin" / "python", venv / "bin" / "agentfense"
    site = Path(_ok(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    before = set(_installed(site))
    assert before == set()
    lap("create the venv")
    pip = (sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-input")

    _ok(*pip, wheel)
    lap("pip install the wheel")
    installed = _installed(site)
    pulled = set(installed) - before
    assert pulled == _closure([(DISTRIBUTION, frozenset())], installed)
    assert {"docker", "prometheus-client", "trio", "requests"}.isdisjoint(pulled)
    assert {"agentfense-sandbox", "anyio", "grpclib", "betterproto", "sniffio"} <= pulled

    imported = _ok(python, "-c", "import agentfense; print(agentfense.__file__)", cwd=tmp_path)
    assert Path(imported.strip()).is_relative_to(site)
    version = agentfense.__version__
    assert installed["agentfense-sandbox"].version == version
    assert _ok(cli, "--version").strip() == f"agentfense {version}"

    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("hello from the project\n")
    (tmp_path / "program.py").write_text(PROGRAM)
    said = _ok(python, "program.py", server.endpoint, "asyncio", cwd=tmp_path)
    assert said.strip() == "0 hello from the project"
    lap("import and run a sandbox (asyncio)")

    doctor = _run(cli, "doctor")
    assert doctor.returncode == 1, doctor.stdout
    assert "[FAIL] server extra: not installed: docker, prometheus-client" in doctor.stdout
    assert f"fix: {SERVER_INSTALL}" in doctor.stdout
    serve = _run(
        cli, "serve", "--listen", f"unix:{tmp_path}/s.sock", "--state-dir", tmp_path / "st"
    )
    assert serve.returncode == 125
    assert SERVER_INSTALL in serve.stderr
    lap("doctor and serve")

    _ok(*pip, f"{wheel}[trio]")
    installed = _installed(site)
    assert set(installed) - before == _closure([(DISTRIBUTION, frozenset({"trio"}))], installed)
    assert "trio" in installed
    assert "docker" not in installed
    said = _ok(python, "program.py", server.endpoint, "trio", cwd=tmp_path)
    assert said.strip() == "0 hello from the project"
    lap("pip install [trio] and run under trio")

    total = sum(timings.values())
    print(f"\nfresh-venv install, {total:.1f} s in all:")
    for what, seconds in timings.items():
        print(f"  {what}: {seconds:.1f} s")
