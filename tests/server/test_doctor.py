"""``agentfense doctor``'s checks on this machine (root, bwrap, FUSE, cgroups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfense.server import doctor


def test_what_the_sandboxes_need_is_here() -> None:
    checks = {check.name: check for check in doctor.run_checks()}
    for name in ("bubblewrap", "user namespaces", "sandbox python", "FUSE", "resource limits"):
        assert checks[name].ok, checks[name]
    assert checks["resource limits"].detail.startswith("on cgroup v")


def test_a_docker_engine_that_does_not_answer_is_a_warning_with_a_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody.sock")
    check = doctor._docker()
    assert not check.ok
    assert not check.required
    assert str(tmp_path) in check.detail
    assert "dockerd.sh start" in check.fix


def test_the_server_extra_is_checked_first_and_found_here() -> None:
    first = doctor.run_checks()[0]
    assert (first.name, first.ok, first.required) == ("server extra", True, True)
    assert first.detail == "installed (docker, prometheus-client)"
