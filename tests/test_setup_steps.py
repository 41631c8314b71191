"""scripts/setup.sh as a user meets it: what ``--demo`` installs (only the demo's needs),
steps that say what they do while they run and how long they took, and a package lock that
another package manager holds waited for, not failed on (scripts/_steps.sh, run by bash; so
does scripts/docker-images.sh)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _bash(script: str, *, heartbeat: int = 15) -> subprocess.CompletedProcess[str]:
    """``script`` in bash after sourcing scripts/_steps.sh."""
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n. scripts/_steps.sh\n{script}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENTFENSE_SETUP_HEARTBEAT": str(heartbeat)},
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _listed(*flags: str) -> tuple[set[str], str]:
    done = subprocess.run(
        ["bash", "scripts/setup.sh", "--list", *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=True,
    )
    packages, venv = done.stdout.splitlines()
    return set(packages.removeprefix("system packages: ").split()), venv


def test_the_demo_installs_only_what_the_demo_needs() -> None:
    demo, demo_venv = _listed("--demo")
    assert demo == {"bubblewrap", "fuse3", "python3", "python3-venv", "ca-certificates"}
    assert demo_venv == "virtualenv .venv: pip install -e '.[server,trio]'"
    full, full_venv = _listed()
    assert demo < full
    assert {"docker.io", "mmdebstrap", "pylint", "flake8", "mypy", "gcc", "libc6-dev"} <= full
    assert full_venv == "virtualenv .venv: pip install -e '.[dev]'"
    demo_sh = (ROOT / "scripts" / "demo.sh").read_text().splitlines()
    assert "bash scripts/setup.sh --demo" in demo_sh


def test_a_step_says_what_it_does_while_it_runs_and_how_long_it_took() -> None:
    started = time.monotonic()
    done = _bash('step "resting a while" sleep 3\necho after', heartbeat=1)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "setup: resting a while ..."
    beats = [line for line in lines if line.startswith("setup: resting a while: still going, ")]
    assert len(beats) >= 2
    assert lines[-2] == "setup: resting a while: done in 3 s"
    assert lines[-1] == "after"
    assert time.monotonic() - started < 10  # (the heartbeat does not hold our output open)


def test_a_failing_step_shows_the_end_of_its_output_and_its_exit_code() -> None:
    done = _bash("step \"breaking\" sh -c 'echo the cause; exit 3'\necho not reached")
    assert done.returncode == 3
    assert "not reached" not in done.stdout
    assert done.stderr.splitlines() == [
        "setup: breaking: FAILED after 0 s (exit 3); its last lines:",
        "the cause",
    ]


def test_a_held_package_lock_is_waited_for_and_said(tmp_path: Path) -> None:
    lock = tmp_path / "lock-frontend"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.lockf(fd, fcntl.LOCK_EX)  # (a POSIX lock, as apt and dpkg take theirs)
    threading.Timer(3, os.close, (fd,)).start()  # closing the file lets the lock go
    started = time.monotonic()
    done = _bash(f"wait_for_package_lock {lock}\necho got it", heartbeat=1)
    waited = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    holder = f"{os.getpid()} ({Path('/proc/self/comm').read_text().strip()})"
    assert lines[0] == f"setup: waiting for the package lock (held by {holder}), 0 s so far"
    assert lines[-2].startswith("setup: the package lock is free after ")
    assert lines[-1] == "got it"
    assert waited >= 2.5


def test_a_free_package_lock_is_taken_without_a_word(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    done = _bash(f"wait_for_package_lock {lock}\necho got it")
    assert done.stdout == "got it\n"


def test_a_killed_script_leaves_no_heartbeat_behind() -> None:
    script = subprocess.Popen(
        ["bash", "-c", '. scripts/_steps.sh\nstep "resting" sleep 5'],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENTFENSE_SETUP_HEARTBEAT": "1"},
    )
    time.sleep(2.5)
    script.kill()
    # the heartbeat holds our end of the pipe open for as long as it runs
    out, _ = script.communicate(timeout=4)
    assert out.startswith("setup: resting ...\nsetup: resting: still going, ")


def test_the_image_script_updates_the_package_lists_through_the_lock_waiting_apt(
    tmp_path: Path,
) -> None:
    """scripts/docker-images.sh updates the host's package lists when they lack
    busybox-static: through ``apt_get`` (which waits for the package lock another package
    manager holds, then gives apt the same wait for dpkg's), as a step that says so.

    apt-cache and apt-get are stand-ins on PATH (apt-cache without lists, apt-get that
    records its arguments and fails as an unreachable mirror would), so that the host's
    lists are not touched; the script stops there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "apt-get.args"
    (bin_dir / "apt-cache").write_text("#!/bin/sh\nexit 100\n")
    (bin_dir / "apt-get").write_text(
        f'#!/bin/sh\necho "$*" >>{record}\necho "E: the mirror is unreachable"\nexit 100\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    done = subprocess.run(
        ["bash", "scripts/docker-images.sh", "build"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "AGENTFENSE_IMAGE_CACHE": str(tmp_path / "cache"),
        },
        timeout=660,  # (another package manager may hold the lock: up to 600 s)
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stderr
    assert record.read_text() == "-o DPkg::Lock::Timeout=600 update -qq\n"
    assert done.stdout.splitlines()[-1] == "docker-images.sh: updating the package lists ..."
    failed, *output = done.stderr.splitlines()
    assert failed.startswith("docker-images.sh: updating the package lists: FAILED after ")
    assert failed.endswith(" s (exit 1); its last lines:")
    assert output == ["E: the mirror is unreachable"]
    assert not (tmp_path / "cache").exists()
