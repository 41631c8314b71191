"""The Docker runtime's confine helper: built from the package's source once per source,
refusing what it should on this host's kernel, and its absence said in a sentence (the
server's log: tests/integration/test_hostile_docker.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agentfense.runtimes import _confine
from agentfense.runtimes._limits import find_limit_cgroups
from agentfense.server import doctor


def test_the_helper_builds_once_per_source_and_confines(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "confine-0123456789abcdef").write_bytes(b"built from an older source")
    helper = _confine.build(tmp_path / "bin")
    assert helper.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in helper.parent.iterdir()] == [helper.name]  # no temporary, no old
    built_at = helper.stat().st_mtime_ns
    assert _confine.build(tmp_path / "bin") == helper
    assert helper.stat().st_mtime_ns == built_at  # the cached one
    home = tmp_path / "home"
    home.mkdir()
    ran = subprocess.run(
        [helper, home, "sh", "-c", f"echo x > {home}/own && cat {home}/own; echo y > /home/x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.stdout == "x\n"
    assert "Permission denied" in ran.stderr  # beneath /home: its own home only
    assert not Path("/home/x").exists()
    usage = subprocess.run([helper], capture_output=True, text=True, check=False)
    assert (usage.returncode, usage.stderr) == (
        126,
        "confine: usage: confine HOMEDIR cmd args...\n",
    )
    missing = subprocess.run(
        [helper, home, "/no/such"], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 127
    assert missing.stderr == "confine: cannot run /no/such: No such file or directory.\n"


def test_no_compiler_is_said_in_a_sentence_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(_confine.ConfineUnavailable, match=r"no C compiler \(/nonexistent/cc\)"):
        _confine.build(tmp_path)
    check = doctor._confine_helper()
    assert not check.ok
    assert not check.required  # bwrap sandboxes need no helper
    assert "unconfined" in check.detail
    assert check.fix.startswith("install gcc and libc6-dev")
    monkeypatch.setenv("CC", "false")  # a compiler that fails: its exit, in the sentence
    with pytest.raises(_confine.ConfineUnavailable, match=r"cannot build .* statically \(exit 1\)"):
        _confine.build(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_doctor_finds_the_helper_builds_here() -> None:
    check = doctor._confine_helper()
    assert (check.ok, check.detail) == (True, "builds: Docker commands are kept apart")


def test_the_doctor_finds_the_launcher_builds_here(monkeypatch: pytest.MonkeyPatch) -> None:
    check = doctor._launcher()
    assert (check.ok, check.detail) == (True, "builds: idle bwrap sandboxes hold no process")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    missing = doctor._launcher()
    assert not missing.ok
    assert not missing.required  # bwrap sandboxes still run, each with its agent
    assert "keep two processes" in missing.detail


def test_the_doctor_measures_moves_into_limit_cgroups(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A move costs an RCU grace period on a kernel without favordynmods: the doctor times
    real ones and says how to fix a slow host."""
    check = doctor._cgroup_moves()
    took = float(check.detail.split(" ms ")[0])
    assert took > 0
    assert check.ok == (took <= doctor.SLOW_MOVE_MS), check  # (this host's kernel decides)
    monkeypatch.setattr(doctor, "SLOW_MOVE_MS", 1e9)
    assert doctor._cgroup_moves().ok
    monkeypatch.setattr(doctor, "SLOW_MOVE_MS", 0.0)
    slow = doctor._cgroup_moves()
    assert not slow.ok
    assert not slow.required
    assert "a bwrap sandbox with limits waits for at each command" in slow.detail
    assert "favordynmods" in slow.fix
    assert doctor.measure_cgroup_move(tmp_path) is None  # (no cgroup there)
    found = find_limit_cgroups()
    assert found is not None
    assert not list((found.roots["pids"] / "agentfense").glob("doctor-*"))  # (none left)
