"""``python -m tests.bench --quick --only start`` runs as ``nox -s bench`` would run it: the
group is wired in, measures on servers of its own, and prints its rows with issue 16's
targets, the tails of the first-command rows, and the idle memory's breakdown. A smoke run:
what it measures is printed, never asserted. And the idle rows refuse to take the shared
machine's memory when it has not enough."""

from __future__ import annotations

import re

import pytest

from ._idle import MemoryShortError, available, check_room
from ._smoke import run_group

FIRST = "create+start+run(echo ok)"


@pytest.mark.bwrap
@pytest.mark.slow
def test_the_start_group_runs_and_prints_its_rows() -> None:
    done = run_group("start")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(re.split(r" {2,}", line) for line in lines if line.startswith("benchmark"))
    table = {
        cells[0]: dict(zip(header, cells, strict=True))
        for cells in (re.split(r" {2,}", line) for line in lines)
        if len(cells) == len(header) and cells[0] != "benchmark" and not cells[0].startswith("-")
    }
    assert {name: row["target"] for name, row in table.items()} == {
        "StartSandbox RPC": "p50<=10ms",
        f"{FIRST}, 10 sequential": "p50<=20ms",
        f"{FIRST}, 10 staggered 10 ms apart": "no errors",
        f"{FIRST}, burst of 10": "no errors",
        'run("true") (issue 16)': "<=0.6x base",
        "idle PSS per sandbox, 10 idle (whole server tree)": "p50<=1MiB",
        "idle PSS per sandbox, 20 idle (whole server tree)": "p50<=1MiB",
    }
    for name, row in table.items():
        if name.startswith(FIRST):  # every creation answered, its tail shown
            assert row["n ours/base"] == "10/10"
            assert float(row["ours p50"]) <= float(row["ours p95"]) <= float(row["ours p99"])
    assert "processes and" in done.stdout  # (the idle rows' notes)
    assert "ERROR" not in done.stdout


def test_idle_sandboxes_that_would_not_fit_in_memory_are_not_started() -> None:
    too_many = available() // 2**20 + 1  # sandboxes of 1 MiB each: more than the machine has
    with pytest.raises(MemoryShortError, match=rf"^{too_many} idle sandboxes would take .* not"):
        check_room(too_many, 2**20)
