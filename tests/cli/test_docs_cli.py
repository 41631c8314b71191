"""Every shell sample of docs/cli.md, and the README's CLI sample, runs as written
(``bash -e``) against a real server; placeholder ids name a real sandbox and codebase."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfense import SandboxClient, SandboxInfo
from agentfense.cli._parser import build_parser

from .conftest import cli_env

pytestmark = pytest.mark.bwrap

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_ID = "sb_0123456789abcdef"
CODEBASE_ID = "cb_0123456789abcdef"
SAMPLE = re.compile(r"```sh\n(.*?)```", re.DOTALL)
SAMPLES = [
    pytest.param(m.group(1), id=f"{doc.name}:{doc.read_text()[: m.start()].count(chr(10)) + 1}")
    for doc in (ROOT / "docs" / "cli.md", ROOT / "README.md")
    for m in SAMPLE.finditer(doc.read_text())
    if "agentfense " in m.group(1)
]
# What some samples must print (beyond exiting 0).
SHOWN = {
    'print("hello")': "hello\n",
    "python3 main.py": "main\n",
    "report.txt": "all good\n",
    "&& echo ok": "ok\n",
}


@pytest.fixture
def sandbox(client: SandboxClient) -> Iterator[SandboxInfo]:
    codebase = client.create_codebase("docs", "tester")
    client.upload_file(codebase.id, "output/report.txt", "all good\n")
    rules = [{"pattern": "**", "permission": "read"}]
    made = client.start_sandbox(client.create_sandbox(codebase.id, permissions=rules).id)
    yield made
    if made.id in {s.id for s in client.list_sandboxes()}:
        client.destroy_sandbox(made.id)
    if codebase.id in {c.id for c in client.list_codebases()}:
        client.delete_codebase(codebase.id)


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 4


@pytest.mark.parametrize("sample", SAMPLES)
def test_the_cli_samples_run(
    sample: str, endpoint: str, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    (tmp_path / "project" / "src").mkdir(parents=True)
    (tmp_path / "project" / "src" / "main.py").write_text("print('main')\n")
    (tmp_path / "project" / "test_it.py").write_text(
        "import unittest\n\nclass T(unittest.TestCase):\n    def test(self):\n        pass\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "agentfense"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m agentfense "$@"\n')
    shim.chmod(0o755)
    env = cli_env(
        AGENTFENSE_ENDPOINT=endpoint,
        PATH=f"{bin_dir}:{cli_env()['PATH']}",
        PYTHONPATH=str(ROOT),
    )
    script = sample.replace(SANDBOX_ID, sandbox.id).replace(CODEBASE_ID, sandbox.codebase_id)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    for needle, shown in SHOWN.items():
        if needle in sample:
            assert shown in done.stdout, needle


def test_every_serve_flag_is_documented() -> None:
    """docs/cli.md's synopsis of ``agentfense serve`` names each of its flags."""
    page = (ROOT / "docs" / "cli.md").read_text()
    start = page.index("`agentfense serve [")
    synopsis = page[start : page.index("`", start + 1)]
    [serve] = [
        action.choices["serve"]
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    flags = {
        option
        for action in serve._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
        if option != "--help" and option.startswith("--")
    }
    assert {"--auth", "--audit-log", "--tls-cert"} <= flags
    assert sorted(flag for flag in flags if flag not in synopsis) == []
