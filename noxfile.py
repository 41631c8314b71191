"""Project tasks. Sessions run in the current environment (``scripts/setup.sh`` makes .venv)."""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
ROOT = Path(__file__).parent
PROTOS = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
GENERATED = ROOT / "agentfense" / "_proto"
PY = sys.executable  # the environment nox runs in (.venv); sessions reuse it
PLUGIN = Path(PY).parent / "protoc-gen-python_betterproto"
CHECKED = ("agentfense", "tests", "noxfile.py", "examples")  # what lint checks


def _generate(session: nox.Session, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    session.run(
        PY,
        "-m",
        "grpc_tools.protoc",
        "-I",
        str(ROOT / "protos"),
        f"--plugin=protoc-gen-python_betterproto={PLUGIN}",
        f"--python_betterproto_out={out}",
        *PROTOS,
        silent=True,
    )


def _tree(path: Path) -> dict[str, Path]:
    return {str(p.relative_to(path)): p for p in path.rglob("*.py")}


@nox.session(python=False)
def generate(session: nox.Session) -> None:
    """Regenerate agentfense/_proto from protos/."""
    shutil.rmtree(GENERATED, ignore_errors=True)
    _generate(session, GENERATED)


@nox.session(python=False)
def generated(session: nox.Session) -> None:
    """Fail when the committed generated code is not what protos/ generates."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        _generate(session, fresh)
        ours, theirs = _tree(GENERATED), _tree(fresh)
        stale = sorted(
            name
            for name in ours.keys() | theirs.keys()
            if name not in ours
            or name not in theirs
            or not filecmp.cmp(ours[name], theirs[name], shallow=False)
        )
    if stale:
        session.error(f"agentfense/_proto is stale ({', '.join(stale)}): run nox -s generate")


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff (with the ASYNC rules), and mypy (strict, with the checks pyproject.toml adds) on
    the package, its tests, the examples and this file."""
    session.run(PY, "-m", "ruff", "check", *CHECKED)
    session.run(PY, "-m", "ruff", "format", "--check", *CHECKED)
    session.run(PY, "-m", "mypy", *CHECKED)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The test suite: real server, real bwrap, both async backends."""
    session.run(PY, "-m", "pytest", *session.posargs)


@nox.session(python=False)
def docs(session: nox.Session) -> None:
    """Build the docs site (mkdocs, the API reference from docstrings) into site/; any
    warning fails the build."""
    session.run(PY, "-m", "mkdocs", "build", "--strict", "--clean")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Benchmarks, measured side by side in one run and printed as a table."""
    session.run(PY, "-m", "tests.bench", *session.posargs)
