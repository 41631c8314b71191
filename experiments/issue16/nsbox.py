"""Design A of issue 16, the host side: sandboxes whose namespaces outlive every process.

``create`` runs bwrap with today's isolation (``bwrap_isolation_args``, so the mount tree is
exactly the runtime's) up to the point where its command would run, bind-mounts the sandbox
process's ``/proc/<pid>/ns/*`` files into a directory of the host (nsfs: each bind holds its
namespace), seals the user namespace (``max_user_namespaces`` 0 inside, in place of bwrap's
``--disable-userns``, which nests a second user namespace whose parent's mounts would be
locked to us), then lets bwrap finish: no process is left. ``run`` is one ``launcher``
exec. ``destroy`` unmounts the binds (the namespaces go with the last reference).

Run as root (the server does). Prototype only.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from agentfense.runtimes.bwrap import bwrap_isolation_args  # noqa: E402

HERE = Path(__file__).resolve().parent
STATE = Path("/run/agentfense-exp16")
NSDIR = STATE / "ns"
BUILDER = STATE / "builder-mnt"
ETC = Path("/tmp/issue16-etc")  # (outside STATE: the builder namespace does not see STATE)
NAMESPACES = ("mnt", "net", "ipc", "uts", "cgroup")
LAUNCHER = Path("/tmp/issue16-bin/launcher")
CGROUP2 = Path("/sys/fs/cgroup/unified")
HOST_UID = 61000  # a sandbox's host uid (the prototype uses one for all)
SANDBOX_UID = 1000

_libc = ctypes.CDLL(None, use_errno=True)
MS_BIND = 0x1000
MS_PRIVATE = 1 << 18
MS_REC = 0x4000
MNT_DETACH = 2


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
        data.encode() if data else None,
    ) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {source} on {target}: {os.strerror(error)}")


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"umount {target}: {os.strerror(error)}")


def build() -> None:
    """The static launcher, and the private tmpfs that holds every sandbox's ns binds (its own
    mount, private: a bind of a sandbox's mount namespace must not propagate anywhere)."""
    LAUNCHER.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["cc", "-static", "-Os", "-o", str(LAUNCHER), str(HERE / "launcher.c")], check=True
    )
    STATE.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(STATE):
        _mount("tmpfs", str(STATE), "tmpfs", 0, "mode=0711")
        _mount("none", str(STATE), None, MS_PRIVATE)
    NSDIR.mkdir(exist_ok=True)
    if not os.path.ismount(BUILDER):
        # The mount namespace sandboxes are built from: the host's, without STATE. Built from
        # the host's own, each new sandbox's copy of the host tree would hold every earlier
        # sandbox's ns binds (5 per sandbox), which bwrap then unmounts again after its
        # pivot_root: create time grew linearly with the sandboxes held (912 in 500 s).
        BUILDER.touch()
        subprocess.run(
            ["unshare", f"--mount={BUILDER}", "--propagation", "private",
             "umount", "-l", str(STATE)],
            check=True,
        )


# Today's isolation minus the user namespace: bwrap, as a non-root user with --uid, nests two
# user namespaces (one mapping 0 for its setup, which owns the mount namespace, then one
# mapping --uid): see README.md, pitfall 1. Variant A1: no user namespace at all; bwrap runs
# as root; commands run as the sandbox's host uid (set by the launcher).
_USERNS_ARGS = {"--unshare-all", "--unshare-user", "--disable-userns"}
_UNSHARE = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup"]


def bwrap_argv(workspace: Path, extra: list[str] | None = None, *, userns: bool = True) -> list[str]:
    """Today's bwrap argv for a sandbox (``userns``), or A1's: the same without a user
    namespace nor ``--uid``/``--gid`` (bwrap refuses those without one)."""
    iso = bwrap_isolation_args(ETC)
    if not userns:
        kept: list[str] = []
        skip = 0
        for arg in iso:
            if skip:
                skip -= 1
                continue
            if arg in ("--uid", "--gid"):
                skip = 1
                continue
            if arg not in _USERNS_ARGS:
                kept.append(arg)
        iso = _UNSHARE + kept
    return [
        shutil.which("bwrap") or "bwrap",
        *iso,
        "--bind",
        str(workspace),
        "/workspace",
        "--remount-ro",
        "/",
        "--chdir",
        "/workspace",
        *(extra or []),
    ]


def create(name: str, workspace: Path) -> Path:
    """Make a sandbox's namespaces and hold them; no process survives. Returns its ns dir."""
    held = NSDIR / name
    held.mkdir()
    ready_r, ready_w = os.pipe()
    block_r, block_w = os.pipe()
    binary = os.open(LAUNCHER, os.O_PATH)  # exec'd through /proc/self/fd: bound nowhere
    argv = bwrap_argv(
        workspace,
        ["--", f"/proc/self/fd/{binary}", "hold", str(ready_w), str(block_r)],
        userns=False,
    )
    # (through the launcher's build mode, not a preexec_fn: that would make subprocess fork
    # the whole server instead of a vfork-like posix_spawn)
    proc = subprocess.Popen(
        [str(LAUNCHER), "build", str(BUILDER), "--", *argv],
        stdin=subprocess.DEVNULL, pass_fds=(ready_w, block_r, binary), env={},
    )
    for fd in (ready_w, block_r, binary):
        os.close(fd)
    try:
        if os.read(ready_r, 1) != b"r":
            proc.wait()
            raise RuntimeError("the holder died")
        child = _holder_pid(proc.pid)
        # No user namespace: bwrap's tmpfs are root's; the sandbox's host uid gets them
        # (through the holder's root: the server never enters the mount namespace).
        root = f"/proc/{child}/root"
        for path in ("home", "home/sandbox", "dev/shm"):
            os.chown(f"{root}/{path}", HOST_UID, HOST_UID)
        os.chmod(f"{root}/tmp", 0o1777)
        for ns in NAMESPACES:
            target = held / ns
            target.touch()
            _mount(f"/proc/{child}/ns/{ns}", str(target), None, MS_BIND)
    finally:
        os.close(ready_r)
        os.close(block_w)
    # Held: the sandbox is ready. bwrap's exit (the holder's pid namespace going) is not
    # waited for here (a server reaps it in the background).
    _EXITING.append(proc)
    return held


_EXITING: list[subprocess.Popen[bytes]] = []  # bwraps whose exit nobody has waited for


def _holder_pid(bwrap_pid: int) -> int:
    """The sandbox's pid 1 (bwrap's one child: --as-pid-1)."""
    children = Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children").read_text().split()
    if not children:
        raise RuntimeError("bwrap has no child")
    return int(children[0])


def destroy(name: str) -> None:
    held = NSDIR / name
    for ns in NAMESPACES:
        target = held / ns
        if target.exists():
            _umount(str(target))
            target.unlink()
    held.rmdir()


def run(name: str, argv: list[str], *, cgroup: str = "-", nproc: int = 0,
        capture: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(LAUNCHER), str(NSDIR / name), cgroup, str(HOST_UID), str(HOST_UID),
         str(nproc), "--", *argv],
        stdin=subprocess.DEVNULL,
        capture_output=capture,
        env={},
        check=False,
    )


def reap() -> None:
    """Collect the exited bwraps and the sandbox inits we inherited (we are their
    subreaper)."""
    for proc in _EXITING:  # (their status no longer matters: the namespaces are held)
        proc.wait()
    _EXITING.clear()
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def subreaper() -> None:
    PR_SET_CHILD_SUBREAPER = 36
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


if __name__ == "__main__":
    build()
    subreaper()
    ws = Path("/tmp/issue16-ws")
    ws.mkdir(exist_ok=True)
    (ws / "README.md").write_text("hello\n")
    t = time.perf_counter()
    held = create("demo", ws)
    print(f"create: {(time.perf_counter() - t) * 1000:.1f} ms", held)
    checks = (
        ["id"],
        ["sh", "-c", "grep -E 'Cap|NoNewPrivs|Seccomp|Uid' /proc/self/status; echo $$; "
         "hostname; ls /workspace; ls /proc | head -3"],
        ["sh", "-c", "echo persisted > /tmp/x; unshare -U true; echo unshare=$?"],
        ["cat", "/tmp/x"],
    )
    for cmd in checks:
        done = run("demo", cmd)
        print(cmd, done.returncode, done.stdout.decode(), done.stderr.decode())
    destroy("demo")


def destroy_all() -> None:
    """Destroy every held sandbox (after a run that died half-way)."""
    for held in sorted(NSDIR.iterdir()):
        for ns in NAMESPACES:
            if os.path.ismount(held / ns):
                _umount(str(held / ns))
        for path in held.iterdir():
            path.unlink()
        held.rmdir()
