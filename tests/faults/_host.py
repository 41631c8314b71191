"""What a server leaves on the host: its processes, the mounts under its state directory,
its sandboxes' cgroups and its containers. Taken before a kill, looked for after a restart."""

from __future__ import annotations

import hashlib
import os
import signal
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import docker

from agentfense.runtimes._cgroup import find_cgroup2_root
from agentfense.runtimes._limits import find_limit_cgroups
from agentfense.testing import ServerProcess


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return int(fields[1]), int(fields[19])


def process_tree(root: int) -> dict[int, int]:
    """``root`` and its descendants now: pid -> start time (a pid reused later is not it)."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            parents.setdefault(found[0], []).append(int(entry))
            starts[int(entry)] = found[1]
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in starts:
            tree[pid] = starts[pid]
            todo.extend(parents.get(pid, []))
    return tree


def kill_all(pids: dict[int, int]) -> None:
    """SIGKILL every process of ``pids`` at once (what killing the process group does)."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cgroup_dirs(sandbox_id: str) -> list[Path]:
    """A sandbox's cgroups on this host now (command leaves and limits; named for it, or
    for one of its runs: ``<id>.<run>``)."""
    roots = []
    unified = find_cgroup2_root()
    if unified is not None:
        roots.append(unified)
    limits = find_limit_cgroups()
    if limits is not None:
        roots.extend(limits.roots.values())
    found = []
    for root in dict.fromkeys(roots):
        found += [
            *(root / "agentfense").glob(f"{sandbox_id}"),
            *(root / "agentfense").glob(f"{sandbox_id}.*"),
        ]
    return found


def _engine() -> docker.APIClient:
    host = os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"
    return docker.APIClient(base_url=host, version="auto")


def containers_of(state_dir: Path) -> list[str]:
    label = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    engine = _engine()
    try:
        found = engine.containers(all=True, filters={"label": f"agentfense.server={label}"})
    finally:
        engine.close()
    return [c["Id"][:12] for c in found]


@dataclass
class Footprint:
    """What a server had on the host just before it was killed."""

    state_dir: Path
    processes: dict[int, int]
    sandboxes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, server: ServerProcess, sandboxes: list[str]) -> Footprint:
        return cls(server.state_dir, process_tree(server.process.pid), list(sandboxes))

    def left(self) -> list[str]:
        """What is still there of it: each a sentence (nothing, once cleaned up)."""
        found = []
        for pid, start in self.processes.items():
            stat = _stat(pid)
            if stat is not None and stat[1] == start:
                with suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    found.append(f"process {pid} still runs: {cmd[:120]!r}")
        for entry in os.listdir("/proc") if self.sandboxes else ():
            with suppress(OSError):
                cgroups = Path(f"/proc/{entry}/cgroup").read_text() if entry.isdigit() else ""
                if any(f"/agentfense/{sandbox}" in cgroups for sandbox in self.sandboxes):
                    found.append(f"process {entry} still runs in a dead sandbox's cgroup")
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                if f" {self.state_dir}/" in line:
                    found.append(f"still mounted: {line.split()[1]}")
        for sandbox in self.sandboxes:
            for path in cgroup_dirs(sandbox):
                found.append(f"cgroup of the dead sandbox {sandbox} remains: {path}")
        delta = self.state_dir / "deltas"
        for sandbox in self.sandboxes:
            if (delta / sandbox).exists():
                found.append(f"the delta of the dead sandbox {sandbox} remains")
        for container in containers_of(self.state_dir):
            found.append(f"container {container} of the dead server remains")
        return found

    async def until_clean(self, within: float = 15.0) -> list[str]:
        """Wait (up to ``within`` s) until nothing is left; what is left if not."""
        deadline = anyio.current_time() + within
        left = await anyio.to_thread.run_sync(self.left)
        while left and anyio.current_time() < deadline:
            await anyio.sleep(0.1)
            left = await anyio.to_thread.run_sync(self.left)
        return left
