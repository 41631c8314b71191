"""A2 probe: a user namespace of our own (root makes it: 1000 -> the sandbox's host uid, 0 ->
another host uid for the skeleton's files), given to bwrap with --userns, so that the mount
namespace and every mount in it belong to that one user namespace; then the launcher joins
user first and mounts a fresh /proc per command. Prints what worked."""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import nsbox

CLONE_NEWUSER = 0x10000000
libc = ctypes.CDLL(None, use_errno=True)


def make_userns(path: Path) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if libc.unshare(CLONE_NEWUSER) != 0:
            os._exit(1)
        os.write(w, b"u")
        os.read(r, 1)  # until the parent has bound us
        os._exit(0)
    assert os.read(r, 1) == b"u"
    Path(f"/proc/{pid}/uid_map").write_text(f"1000 {nsbox.HOST_UID} 1\n0 {nsbox.HOST_UID + 1} 1\n")
    Path(f"/proc/{pid}/setgroups").write_text("deny")
    Path(f"/proc/{pid}/gid_map").write_text(f"1000 {nsbox.HOST_UID} 1\n0 {nsbox.HOST_UID + 1} 1\n")
    path.touch()
    nsbox._mount(f"/proc/{pid}/ns/user", str(path), None, nsbox.MS_BIND)
    os.write(w, b"x")
    os.waitpid(pid, 0)


def main() -> None:
    nsbox.build()
    nsbox.subreaper()
    held = nsbox.NSDIR / "a2"
    held.mkdir()
    try:
        run(held)
    finally:
        nsbox.reap()
        for ns in (*nsbox.NAMESPACES, "user"):
            if os.path.ismount(held / ns):
                nsbox._umount(str(held / ns))
            (held / ns).unlink(missing_ok=True)
        held.rmdir()


def run(held: Path) -> None:
    make_userns(held / "user")
    userns = os.open(held / "user", os.O_RDONLY)
    ready_r, ready_w = os.pipe()
    block_r, block_w = os.pipe()
    binary = os.open(nsbox.LAUNCHER, os.O_PATH)
    iso = [a for a in nsbox.bwrap_isolation_args(nsbox.ETC)
           if a not in ("--unshare-all", "--unshare-user", "--disable-userns")]
    argv = [
        "/usr/bin/bwrap", "--userns", str(userns), *nsbox._UNSHARE, *iso,
        "--bind", str(Path("/tmp/issue16-ws")), "/workspace", "--remount-ro", "/",
        "--chdir", "/workspace",
        "--", f"/proc/self/fd/{binary}", "hold", str(ready_w), str(block_r),
    ]
    proc = subprocess.Popen([str(nsbox.LAUNCHER), "build", str(nsbox.BUILDER), "--", *argv],
                            pass_fds=(userns, ready_w, block_r, binary), env={},
                            stderr=subprocess.PIPE)
    for fd in (ready_w, block_r, binary):
        os.close(fd)
    try:
        if os.read(ready_r, 1) != b"r":
            print("bwrap --userns failed:", proc.communicate()[1].decode())
            return
        child = nsbox._holder_pid(proc.pid)
        print("holder uid_map:", Path(f"/proc/{child}/uid_map").read_text().split("\n")[:2])
        same = os.readlink(f"/proc/{child}/ns/user") == os.readlink(f"/proc/self/fd/{userns}")
        print("holder is in our user namespace (not a nested one):", same)
        for ns in nsbox.NAMESPACES:
            (held / ns).touch()
            nsbox._mount(f"/proc/{child}/ns/{ns}", str(held / ns), None, nsbox.MS_BIND)
    finally:
        os.close(ready_r)
        os.close(block_w)
        proc.wait()
    for cmd in (["id"], ["sh", "-c", "ls /proc | head -2; grep Cap[EB] /proc/self/status; "
                          "echo x > /tmp/y && cat /tmp/y; touch /home/z; echo home=$?"]):
        done = subprocess.run(
            [str(nsbox.LAUNCHER), str(held), "-", "1000", "1000", "0", "--", *cmd],
            capture_output=True)
        print(cmd[0], done.returncode, done.stdout.decode(), done.stderr.decode())
    out = subprocess.run(
        ["/tmp/issue16-bin/spawnbench", "100",
         f"{nsbox.LAUNCHER} {held} - 1000 1000 0 -- /bin/true"],
        capture_output=True, text=True).stdout
    print("A2 exec true:", out.replace(str(held), "NSDIR"))

if __name__ == "__main__":
    main()
