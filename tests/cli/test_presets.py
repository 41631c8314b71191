"""``agentfense presets [NAME]``: every preset, and one preset's rules by precedence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentfense.presets import get_preset, list_presets

from .conftest import cli, cli_env


def test_the_listing_names_every_preset_with_its_rule_count() -> None:
    done = cli("presets")
    assert (done.returncode, done.stderr) == (0, "")
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["PRESET", "RULES", "GIVES"]
    assert [row.split()[:2] for row in rows] == [
        [name, str(len(get_preset(name)))] for name in list_presets()
    ]
    [agent_safe] = [row for row in rows if row.startswith("agent-safe ")]
    assert "(/workspace/output, /workspace/tmp; the sandbox's own /tmp" in agent_safe


def test_one_preset_shows_every_rule_by_precedence_and_where_yours_rank() -> None:
    done = cli("presets", "agent-safe")
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    start = lines.index("PRIORITY  LEVEL  TYPE  PATTERN")
    end = lines.index("", start)
    rows = [line.split() for line in lines[start + 1 : end]]
    assert sorted(rows) == sorted(
        [str(r.priority), r.permission.value, r.type.value, r.pattern]
        for r in get_preset("agent-safe")
    )
    assert [row[0] for row in rows] == ["100"] * (len(rows) - 3) + ["10", "10", "0"]
    assert rows[-1] == ["0", "read", "glob", "**"]
    assert ["10", "write", "glob", "tmp/**"] in rows
    said = " ".join(lines)
    assert "(output/** is /workspace/output/**)" in said
    assert "One for an exact path at the default priority 0 is sent at priority 101" in said


def test_an_unknown_preset_exits_125_with_the_nearest_name() -> None:
    done = cli("presets", "agent-saf")
    assert done.returncode == 125
    assert done.stdout == ""
    assert done.stderr == (
        "agentfense presets: unknown preset 'agent-saf'; did you mean 'agent-safe'? known "
        "presets: agent-safe, development, full-access, read-only, view-only\n"
    )
    assert cli("presets", "a", "b").returncode == 125
    mistyped = cli("preset")
    assert mistyped.returncode == 125
    assert "did you mean 'presets'?" in mistyped.stderr


@pytest.mark.parametrize("words", [("presets", "view-only"), ("doctor",), ("--help",)])
def test_a_closed_reader_ends_it_quietly(words: tuple[str, ...]) -> None:
    """As ``agentfense presets | head -1`` when head is gone before the table is written:
    every command that writes ends as a pipe's writer does (``doctor`` once said
    "unexpected BrokenPipeError" and exited 125)."""
    with subprocess.Popen(
        [sys.executable, "-m", "agentfense", *words],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    ) as shown:
        assert shown.stdout is not None
        shown.stdout.close()  # long before the interpreter has started
        assert shown.wait(timeout=60) == 141
        assert shown.stderr is not None
        assert shown.stderr.read() == b""


@pytest.mark.bwrap
def test_run_ranks_an_exact_rule_above_the_preset_and_warns_of_an_outranked_one(
    endpoint: str, project: Path
) -> None:
    (project / ".env").write_text("TOKEN=hunter2\n")
    (project / ".env.example").write_text("TOKEN=\n")
    done = cli(
        "run", "--endpoint", endpoint, "--preset", "agent-safe",
        "--rule", ".env.example=read", "--rule", "**/.npmrc=read",
        str(project), "--", "cat .env.example; ls -A",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("TOKEN=\n.env.example\n")
    assert ".env\n" not in done.stdout
    assert done.stderr == (
        "agentfense run: warning: permission rule '**/.npmrc' (read) has no effect on "
        "/workspace/.npmrc: preset 'agent-safe' rule '**/.[nN][pP][mM][rR][cC]' (none, "
        "priority 100) outranks it; give yours priority=101 to outrank it\n"
    )
