"""What the CLI says when it, not the command, fails: one line, exit 125; a traceback only
with --debug; --version; did-you-mean."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import agentfense

from .conftest import cli


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["rn", "./p", "--", "ls"], "agentfense: 'rn' is not a command; did you mean 'run'?"),
        (["exce", "sb_1"], "agentfense: 'exce' is not a command; did you mean 'exec'?"),
        (["sevre"], "agentfense: 'sevre' is not a command; did you mean 'serve'?"),
        (["zzz"], "agentfense: 'zzz' is not a command (commands: run, exec, ls, rm, presets"),
        (["run", "./p"], "agentfense run: give the command after --"),
        (["run", "--rule", "**/*.py", "./p", "--", "ls"], "agentfense run: argument --rule:"),
        (["run", "--rule", "x=all", "./p", "--", "ls"], "'all' in 'x=all' is not a level"),
        (["run", "--memory", "lots", "./p", "--", "ls"], "'lots' is not a size"),
        (["run", "--cpus", "0", "./p", "--", "ls"], "give a number above 0"),
        (["run", "--env", "1X=2", "./p", "--", "ls"], "'1X=2' is not NAME=VALUE"),
        (["run", "--timeout", "-1", "./p", "--", "ls"], "give a number of seconds above 0"),
        (["run", "--runtime", "vm", "./p", "--", "ls"], "invalid choice: 'vm'"),
        (["ls", "--", "x"], "agentfense ls: `agentfense ls` takes no command after --"),
        (["rm"], "agentfense rm: the following arguments are required: ID"),
    ],
)
def test_bad_usage_is_one_line_and_exit_125(args: list[str], said: str) -> None:
    done = cli(*args)
    assert done.returncode == 125
    [line] = done.stderr.splitlines()
    assert said in line
    assert done.stdout == ""


def test_a_missing_project_is_one_line_and_a_traceback_only_with_debug(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    done = cli("run", str(missing), "--", "ls")
    assert done.returncode == 125
    assert done.stderr.splitlines() == [f"agentfense run: project path '{missing}' does not exist"]
    debugged = cli("--debug", "run", str(missing), "--", "ls")
    assert debugged.returncode == 125
    assert "Traceback (most recent call last):" in debugged.stderr
    assert debugged.stderr.splitlines()[-1] == done.stderr.splitlines()[0]
    assert "Traceback" in cli("run", "--debug", str(missing), "--", "ls").stderr


def test_a_bad_preset_is_refused_before_anything_is_made(project: Path, endpoint: str) -> None:
    done = cli("run", "--endpoint", endpoint, "--preset", "lax", str(project), "--", "ls")
    assert done.returncode == 125
    [line] = done.stderr.splitlines()
    assert line.startswith("agentfense run: unknown preset 'lax'; known presets: agent-safe")


def test_no_server_is_one_line(tmp_path: Path) -> None:
    done = cli("ls", "--endpoint", f"unix:{tmp_path}/none.sock")
    assert done.returncode == 125
    [line] = done.stderr.splitlines()
    assert line.startswith("agentfense ls: ")
    assert "none.sock" in line


def test_serve_with_a_bad_listen_address_is_one_line(tmp_path: Path) -> None:
    done = cli("serve", "--listen", "nowhere:port", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 125
    [line] = done.stderr.splitlines()
    assert line.startswith("agentfense serve: ")


def test_version_has_one_source() -> None:
    done = cli("--version")
    assert (done.returncode, done.stdout) == (0, f"agentfense {agentfense.__version__}\n")
    project = tomllib.loads(Path(__file__).parents[2].joinpath("pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "agentfense.__version__"


def test_help_shows_examples_and_exit_codes() -> None:
    top = cli("--help")
    assert top.returncode == 0
    assert "124 timeout; 125 agentfense failed" in top.stdout
    for command in ("run", "exec", "ls", "rm", "serve", "doctor"):
        shown = cli(command, "--help")
        assert shown.returncode == 0
        assert f"agentfense {command}" in shown.stdout.split("examples:")[-1], command
