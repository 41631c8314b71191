"""``python -m tests.bench --quick --only trust`` runs as ``nox -s bench`` would run it: the
group is wired in, measures both sides on real servers, and prints its rows with issue 12's
target. A smoke run: what it measures is printed, never asserted."""

from __future__ import annotations

import re

import pytest

from ._smoke import run_group

pytestmark = pytest.mark.bwrap


def test_the_trust_group_runs_and_prints_its_rows() -> None:
    done = run_group("trust")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [re.split(r" {2,}", line) for line in done.stdout.splitlines()]  # (the columns)
    shown = {(cells[0], cells[1]) for cells in rows if cells[0].startswith(("run(", "get_"))}
    assert shown == {
        ('run("true"), auth token + TLS', "asyncio"),
        ('run("true"), auth token + TLS', "trio"),
        ("get_sandbox RPC, auth token + TLS", "asyncio"),
    }
    run_rows = [line for line in done.stdout.splitlines() if line.startswith('run("true")')]
    assert all("auth none, plain TCP" in line and "<=1.1x base" in line for line in run_rows)
    assert "ERROR" not in done.stdout
