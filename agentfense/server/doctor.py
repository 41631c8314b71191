"""``agentfense doctor``: can this machine run sandboxes? Each check says how to fix it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .._extras import SERVER_INSTALL, SERVER_MODULES, missing_server_distributions
from ..runtimes._cgroup import find_cgroup2_root
from ..runtimes._limits import find_limit_cgroups
from ..runtimes._static_helpers import FIX, HelperUnavailable
from ..runtimes._static_helpers import build as build_helper
from ..runtimes.docker import DOCKER_API_VERSION, unix_socket_problem


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _server_extra() -> Check:
    missing = missing_server_distributions()
    if missing:
        return Check(
            "server extra",
            False,
            f"not installed: {', '.join(missing)} (a client-only install cannot serve)",
            SERVER_INSTALL,
        )
    return Check("server extra", True, f"installed ({', '.join(sorted(SERVER_MODULES))})")


def _bwrap() -> Check:
    path = shutil.which("bwrap")
    if path is None:
        return Check("bubblewrap", False, "bwrap not found", "apt-get install -y bubblewrap")
    probe = subprocess.run(
        [path, "--unshare-all", "--ro-bind", "/", "/", "--cap-drop", "ALL", "true"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if probe.returncode != 0:
        return Check(
            "bubblewrap",
            False,
            f"bwrap cannot create namespaces: {probe.stderr.strip()}",
            "enable user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 "
            "user.max_user_namespaces=15000",
        )
    return Check("bubblewrap", True, f"{path} creates isolated namespaces")


def _userns() -> Check:
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except OSError:
        limit = -1
    if limit == 0:
        return Check(
            "user namespaces",
            False,
            "user.max_user_namespaces is 0",
            "sysctl -w user.max_user_namespaces=15000",
        )
    return Check("user namespaces", True, f"allowed (max {limit})")


def _python() -> Check:
    ok = Path("/usr/bin/python3").exists()
    return Check(
        "sandbox python",
        ok,
        "/usr/bin/python3 " + ("present" if ok else "missing"),
        "apt-get install -y python3",
    )


def _fuse() -> Check:
    dev = Path("/dev/fuse").exists()
    # Root mounts the views itself; anyone else needs the set-user-ID fusermount3.
    tool = os.geteuid() == 0 or shutil.which("fusermount3") is not None
    return Check(
        "FUSE",
        dev and tool,
        f"/dev/fuse {'present' if dev else 'missing'}"
        + ("" if os.geteuid() == 0 else f", fusermount3 {'present' if tool else 'missing'}"),
        "apt-get install -y fuse3 (and load the fuse module: modprobe fuse)",
    )  # (required: every sandbox's view is a FUSE mount, made when the sandbox is created)


def _cgroups() -> Check:
    root = find_cgroup2_root() if os.geteuid() == 0 else None
    if root is None:
        return Check(
            "cgroup v2",
            False,
            "no writable cgroup v2 hierarchy: timeouts kill by process group only",
            "run the server as root on a host with cgroup v2 (mount -t cgroup2 none "
            "/sys/fs/cgroup/unified)",
            required=False,
        )
    return Check("cgroup v2", True, f"writable at {root}")


def _limits() -> Check:
    found = find_limit_cgroups()
    if found is None:
        return Check(
            "resource limits",
            False,
            "no cgroup hierarchy with the memory, cpu and pids controllers (or not root): "
            "sandboxes that ask for limits are refused",
            "run the server as root on a host with cgroup v2 or v1 controllers mounted",
            required=False,
        )
    return Check("resource limits", True, f"on {found.describe()}")


# Past this, moving a process into a cgroup waits for an RCU grace period (see below).
SLOW_MOVE_MS = 2.0
_FAVOR = (
    "mount -o remount,favordynmods on the cgroup2 mount (Linux 6.0 or later; the option "
    "lasts until reboot: add it to the mount's options in /etc/fstab or your init system)"
)


def _cgroup_moves() -> Check:
    """How long moving a process into a sandbox's limit cgroups takes here. Each command
    of a bwrap sandbox with limits (the default pids limit among them) that starts a new
    process tree does it once (its first ahead of time: ``_waiting_launcher``); without the
    ``favordynmods`` mount option, the kernel makes every such move wait for an RCU grace
    period (5-20 ms on the 2-core VM this was written on, 0.07 ms with the option)."""
    found = find_limit_cgroups()
    if found is None:
        return Check("cgroup moves", True, "no limit cgroups here: nothing to move", required=False)
    took = measure_cgroup_move(found.roots["pids"] / "agentfense")
    if took is None:
        return Check("cgroup moves", False, "cannot measure here", required=False)
    detail = f"{took:.2f} ms to move a process into a sandbox's limit cgroups"
    if took > SLOW_MOVE_MS:
        detail += (
            ", which a bwrap sandbox with limits waits for at each command that starts a new "
            "process tree but its first (whose move begins as the sandbox is made)"
        )
        return Check("cgroup moves", False, detail, _FAVOR, required=False)
    return Check("cgroup moves", True, detail, required=False)


def measure_cgroup_move(parent: Path, samples: int = 3) -> float | None:
    """Milliseconds (the median of ``samples``, apart enough that each waits for the kernel
    as a command's would) to move a process into a new cgroup under ``parent``; None when it
    cannot be done here."""
    scratch = parent / f"doctor-{os.getpid()}"
    times: list[float] = []
    try:
        scratch.mkdir(parents=True)
    except OSError:
        return None
    try:
        if not (scratch / "cgroup.procs").exists():  # (not a cgroup: a plain directory)
            return None
        for _ in range(samples):
            child = subprocess.Popen(["sleep", "10"])
            try:
                time.sleep(0.05)
                began = time.perf_counter()
                (scratch / "cgroup.procs").write_text(str(child.pid))
                times.append((time.perf_counter() - began) * 1000)
            except OSError:
                return None
            finally:
                child.kill()
                child.wait()
    finally:
        for _ in range(100):  # (until the killed children have left it)
            try:
                scratch.rmdir()
                break
            except OSError:
                time.sleep(0.01)
    return sorted(times)[len(times) // 2]


def _docker() -> Check:
    host = os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"
    fix = "apt-get install -y docker.io, then bash scripts/dockerd.sh start (or set DOCKER_HOST)"
    if "docker" in missing_server_distributions():
        return Check("docker", False, "the docker package is missing", SERVER_INSTALL, False)
    unreachable = unix_socket_problem(host)
    if unreachable is not None:
        return Check("docker", False, f"no Docker engine answers at {unreachable}", fix, False)
    try:
        import docker

        api = docker.APIClient(base_url=host, version=DOCKER_API_VERSION, timeout=5)
        try:
            version = api.version().get("Version", "?")
        finally:
            api.close()
    except Exception as exc:
        return Check("docker", False, f"no Docker engine answers at {host} ({exc})", fix, False)
    return Check("docker", True, f"Docker {version} at {host}", required=False)


def _static_helper(name: str, check: str, works: str, without: str) -> Check:
    """Whether the server can build the static helper ``name`` (in a scratch directory: a
    compiler without a static C library cannot); ``without`` says what happens if not."""
    with tempfile.TemporaryDirectory(prefix="agentfense-doctor-") as scratch:
        try:
            build_helper(name, Path(scratch))
        except HelperUnavailable as exc:
            return Check(check, False, f"{without}: {exc}", FIX, required=False)
    return Check(check, True, f"builds: {works}", required=False)


def _confine_helper() -> Check:
    """Whether the server can build the helper that keeps Docker commands apart."""
    return _static_helper(
        "confine",
        "confine helper",
        "Docker commands are kept apart",
        "Docker sandboxes would run their commands unconfined, so a process one command "
        "leaves running could look into later ones, and the raw sockets they try would go "
        "unlogged",
    )


def _launcher() -> Check:
    """Whether the server can build the launcher, which lets an idle bwrap sandbox hold no
    process."""
    return _static_helper(
        "launcher",
        "launcher",
        "idle bwrap sandboxes hold no process",
        "each bwrap sandbox would keep two processes (bwrap and an agent) while idle",
    )


def run_checks() -> list[Check]:
    return [
        _server_extra(),
        _bwrap(),
        _userns(),
        _python(),
        _fuse(),
        _cgroups(),
        _limits(),
        _cgroup_moves(),
        _docker(),
        _confine_helper(),
        _launcher(),
    ]
