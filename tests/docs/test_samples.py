"""Every code sample of the docs and the README runs as written, against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agentfense.server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(python|toml)\n(.*?)```", re.DOTALL)
SAMPLES = [
    pytest.param(kind, code, id=f"{doc.name}:{doc.read_text()[: m.start()].count(chr(10)) + 1}")
    for doc in DOCS
    for m in BLOCK.finditer(doc.read_text())
    for kind, code in [(m.group(1), m.group(2))]
]


def _project(root: Path) -> None:
    (root / "project" / "src").mkdir(parents=True)
    (root / "project" / "src" / "main.py").write_text("print('main')\n")
    (root / "project" / "README.md").write_text("# sample project\n")
    (root / "project" / ".env").write_text("SECRET=do-not-show\n")


def test_the_docs_have_samples() -> None:
    assert len(SAMPLES) >= 10


@pytest.mark.parametrize(("kind", "code"), SAMPLES)
def test_sample_runs(kind: str, code: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if kind == "toml":
        data = tomllib.loads(code)
        ServerConfig().with_values(data.get("server", data))
        return
    if "Sandbox" in code or "agentfense serve" in code:  # the async or the sync API
        request.getfixturevalue("default_server")
    _project(tmp_path)
    sample = tmp_path / "sample.py"
    sample.write_text(code)
    done = subprocess.run(
        [sys.executable, str(sample)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
