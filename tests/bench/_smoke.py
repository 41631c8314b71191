"""A quick run of one benchmark group, as ``nox -s bench`` would run it (its smoke tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_group(group: str) -> subprocess.CompletedProcess[str]:
    """``python -m tests.bench --quick --only GROUP``, finished (its table on stdout)."""
    return subprocess.run(
        [sys.executable, "-m", "tests.bench", "--quick", "--only", group],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
