"""Per-command cgroups on the cgroup v2 hierarchy, so that killing a command reaches every
process it started (even ones that left its session). Absent cgroup v2 (or root), commands
are killed by process group instead, and :func:`find_cgroup2_root` says so by returning None.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Collection
from pathlib import Path

import anyio

_PARENT = "agentfense"


def find_cgroup2_root(mountinfo: str | None = None) -> Path | None:
    """The writable cgroup2 mount point (``/sys/fs/cgroup`` or ``.../unified``), if any."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            path = Path(left.split(" ")[4])
            if os.access(path, os.W_OK) and (path / "cgroup.procs").exists():
                return path
    return None


def hold(cgroup: Path) -> int:
    """Mark a sandbox's cgroup as a live server's, for as long as the fd returned is open: a
    shared flock on its directory. A held bwrap sandbox may have no process at all, which
    ``sweep_dead`` would otherwise take for the sign of a sandbox gone with its server."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        raise
    return fd


def _held(cgroup: Path) -> bool:
    """Whether a live server holds the sandbox of ``cgroup`` (``hold``)."""
    try:
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # (and the lock taken, if it was)
    return False


def _kill_all(cgroup: Path) -> None:
    """SIGKILL every process in ``cgroup`` and below (v2 and v1 alike)."""
    with contextlib.suppress(OSError):
        (cgroup / "cgroup.kill").write_text("1")  # v2: the whole subtree at once
    for directory in [cgroup, *(p for p in cgroup.glob("*") if p.is_dir())]:
        for pid in SandboxCgroup.members(directory):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _remove_if_empty(cgroup: Path) -> bool:
    """Remove ``cgroup`` (a sandbox's: its leaves, then itself) unless a process is in it."""
    leaves = [p for p in cgroup.iterdir() if p.is_dir()]
    if any(SandboxCgroup.members(p) for p in [cgroup, *leaves]):
        return False
    for leaf in leaves:
        leaf.rmdir()
    cgroup.rmdir()
    return True


def sweep_dead(
    root: Path,
    older_than: float = 60.0,
    *,
    dead: Collection[str] = (),
    roots: Collection[Path] = (),
    wait: float = 5.0,
) -> int:
    """Remove the cgroups of sandboxes that are gone: left by a server that was killed (its
    sandboxes died with it; nobody removed their cgroups), in ``root`` and in the limit
    hierarchies ``roots``. Returns how many were removed.

    The sandboxes ``dead`` are known to be gone (the killed server was this one: their
    deltas are still there): whatever still runs in their cgroups is killed, and they are
    removed whatever their age (a process dying with the killed server may take a moment to
    leave them: waited for up to ``wait`` seconds). Any other sandbox's cgroup with no
    process in it or below, untouched for ``older_than`` seconds, is dead too (a live one
    holds its agent, or its server holds it: ``hold``, for an idle held sandbox, which has no
    process; one being set up, by any server, is younger).
    """
    removed = 0
    hierarchies = list(dict.fromkeys([root, *roots]))
    wanted = set(dead)  # a cgroup is named for its sandbox ("sb_x", or "sb_x.<run>")
    condemned = [
        cgroup
        for hierarchy in hierarchies
        for cgroup in (hierarchy / _PARENT).glob("sb_*")
        if cgroup.name.partition(".")[0] in wanted and cgroup.is_dir()
    ]
    for cgroup in condemned:
        _kill_all(cgroup)
    deadline = time.monotonic() + wait
    while condemned:
        for cgroup in list(condemned):
            with contextlib.suppress(OSError):
                if _remove_if_empty(cgroup):
                    condemned.remove(cgroup)
                    removed += 1
        if not condemned or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    now = time.time()
    for hierarchy in hierarchies:
        for sandbox in (hierarchy / _PARENT).glob("sb_*"):
            try:
                if now - sandbox.stat().st_mtime < older_than:
                    continue
                if _held(root / _PARENT / sandbox.name):  # (a limit cgroup's: by its name)
                    continue
                removed += _remove_if_empty(sandbox)
            except OSError:
                continue
    return removed


class SandboxCgroup:
    """``<cgroup2>/agentfense/<sandbox>/`` with one leaf per running command.

    With ``owner_uid`` (the uid the sandbox's agent runs as on the host), the agent lives in
    the ``agent`` leaf and may move processes between the sandbox's leaves (their
    ``cgroup.procs`` are its, as in a delegated subtree): it starts each command right in its
    leaf (clone3 with CLONE_INTO_CGROUP), which spares a migration. No process of the
    sandbox can reach the cgroup file system to do the same.
    """

    def __init__(self, root: Path, sandbox_id: str, owner_uid: int | None = None) -> None:
        self.path = root / _PARENT / sandbox_id
        self.path.mkdir(parents=True, exist_ok=True)
        self._next = 0
        self._owner = owner_uid
        if owner_uid is not None:
            (self.path / "agent").mkdir(exist_ok=True)
            for procs in (self.path / "cgroup.procs", self.path / "agent" / "cgroup.procs"):
                os.chown(procs, owner_uid, -1)

    def agent_join_fd(self) -> int:
        """A write fd on the agent leaf's ``cgroup.procs``, for the agent to enter it."""
        return os.open(self.path / "agent" / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    def leaf_dir_fd(self, leaf: Path) -> int | None:
        """An fd on the leaf's directory to start a process in it (clone3), when the agent
        may; None otherwise."""
        if self._owner is None:
            return None
        os.chown(leaf / "cgroup.procs", self._owner, -1)
        return os.open(leaf, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    @classmethod
    def inside(cls, path: Path) -> SandboxCgroup:
        """Command leaves under an existing cgroup (a container's)."""
        self = cls.__new__(cls)
        self.path = path
        self._next = 0
        self._owner = None
        return self

    def new_leaf(self, kind: str = "cmd") -> Path:
        """A new leaf cgroup: ``cmd-N`` for a command, ``init-N`` for a held sandbox's init."""
        self._next += 1
        leaf = self.path / f"{kind}-{self._next}"
        leaf.mkdir()
        return leaf

    def open_command(self) -> tuple[Path, int]:
        """A new leaf cgroup and a write fd on its ``cgroup.procs`` (joins a process to it)."""
        leaf = self.new_leaf()
        return leaf, os.open(leaf / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    @staticmethod
    def kill(leaf: Path) -> None:
        with contextlib.suppress(OSError):
            (leaf / "cgroup.kill").write_text("1")

    @staticmethod
    def members(leaf: Path) -> frozenset[int]:
        """The (host) pids in ``leaf`` now."""
        try:
            return frozenset(int(pid) for pid in (leaf / "cgroup.procs").read_text().split())
        except OSError:
            return frozenset()

    @staticmethod
    async def kill_except(
        leaf: Path, keep: frozenset[int], *, interrupt: int | None = None
    ) -> None:
        """SIGKILL every process in ``leaf`` but ``keep``: frozen first, so none forks away.
        ``interrupt`` (a pid of ``keep``) is sent SIGINT, and SIGCONT, while all are frozen:
        it sees them gone and the signal together when it runs again."""
        freeze = leaf / "cgroup.freeze"
        try:
            freeze.write_text("1")
        except OSError:
            return
        try:
            for _ in range(200):  # freezing completes asynchronously (up to 1 s here)
                if "frozen 1" in (leaf / "cgroup.events").read_text():
                    break
                await anyio.sleep(0.005)
            if interrupt is not None:
                for number in (signal.SIGINT, signal.SIGCONT):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(interrupt, number)
            for pid in SandboxCgroup.members(leaf) - keep:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(OSError):
                freeze.write_text("0")

    @staticmethod
    def try_remove(leaf: Path) -> bool:
        """Remove an empty leaf; False while processes (background jobs) remain in it."""
        try:
            leaf.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    @staticmethod
    async def emptied(leaf: Path) -> None:
        """Wait (up to 5 s) until ``leaf`` holds no process: a kill completes asynchronously,
        and until then the dying processes still count against the sandbox's limits."""
        for _ in range(1000):
            if not SandboxCgroup.members(leaf):
                return
            await anyio.sleep(0.005)

    async def kill_leaves(self, keep: Collection[Path] = (), *, kinds: str = "cmd") -> None:
        """Kill every command's processes (but those in ``keep``) and remove their leaves
        (``kinds="*"``: every leaf's, inits' too)."""
        leaves = [leaf for leaf in sorted(self.path.glob(f"{kinds}-*")) if leaf not in keep]
        for leaf in leaves:
            self.kill(leaf)
        for leaf in leaves:
            await self.emptied(leaf)
            self.try_remove(leaf)

    def remove(self) -> bool:
        """Remove the sandbox's cgroup and its leaves (once its processes are gone); False
        while it is busy."""
        try:
            leaves = [p for p in self.path.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return True
        for directory in (*leaves, self.path):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                return False
        return True
