"""Mounting one view: a FUSE connection of its own, on ``/dev/fuse``.

The server mounts each view and keeps the device's file descriptor for as long as the view
lives; the fs process serves the connection through a copy of that descriptor. The
connection therefore outlives an fs process that dies: requests wait in the kernel for the
next one, which asks for the unanswered ones again (``FUSE_NOTIFY_RESEND``).

As root the mount is made with ``mount(2)``; otherwise by ``fusermount3`` (set-user-ID
root, from the fuse3 package), which hands the device back over a socket.
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
import shutil
import socket
import subprocess
from pathlib import Path

_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)
FSNAME = "agentfense"


class MountError(OSError):
    """The view could not be mounted (the sentence says why)."""


def _options(fd: int, *, allow_other: bool) -> str:
    # default_permissions: the kernel checks every access against the owner and mode we
    # report (the level of each path, as mode bits), so opening a file needs no request.
    options = [f"fd={fd}", "rootmode=40000", f"user_id={os.geteuid()}"]
    options += [f"group_id={os.getegid()}", "default_permissions"]
    if allow_other:
        options.append("allow_other")  # the sandbox runs as its own uid, not the server's
    return ",".join(options)


def mount_view(mountpoint: Path) -> int:
    """Mount a new FUSE connection on ``mountpoint``; the device fd that serves it.

    The kernel queues FUSE_INIT at once; nothing may touch the mount until a process
    answers it on the returned descriptor.
    """
    if os.geteuid() != 0:
        return _mount_with_fusermount(mountpoint)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    data = _options(fd, allow_other=True).encode()
    if _libc.mount(
        FSNAME.encode(),
        os.fsencode(mountpoint),
        f"fuse.{FSNAME}".encode(),
        ctypes.c_ulong(_MS_NOSUID | _MS_NODEV),
        data,
    ):
        err = ctypes.get_errno()
        os.close(fd)
        raise MountError(err, f"cannot mount the view at {mountpoint}: {os.strerror(err)}")
    return fd


def _mount_with_fusermount(mountpoint: Path) -> int:
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        raise MountError(errno.ENOENT, "fusermount3 is missing; install the 'fuse3' package")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        done = subprocess.run(
            [fusermount, "-o", f"nosuid,nodev,default_permissions,fsname={FSNAME}",
             "--", str(mountpoint)],
            env={"_FUSE_COMMFD": str(theirs.fileno()), "PATH": os.environ.get("PATH", "")},
            pass_fds=(theirs.fileno(),),
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        fds = array.array("i")
        if done.returncode == 0:
            _, ancillary, _, _ = ours.recvmsg(1, socket.CMSG_LEN(fds.itemsize))
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: fds.itemsize])
    if not fds:
        raise MountError(errno.EPERM, f"fusermount3 failed: {done.stderr.strip()}")
    os.set_inheritable(fds[0], False)
    return fds[0]


def unmount(mountpoint: Path) -> None:
    """Detach the mount (lazily: processes that still hold it keep it until they let go)."""
    if os.geteuid() != 0:
        fusermount = shutil.which("fusermount3") or "fusermount3"
        subprocess.run([fusermount, "-u", "-z", "--", str(mountpoint)], capture_output=True)
        return
    if _libc.umount2(os.fsencode(mountpoint), _MNT_DETACH):
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            raise OSError(err, os.strerror(err), str(mountpoint))


def mounted_views(directory: Path) -> list[Path]:
    """The mounts directly below ``directory`` (left by a server that was killed)."""
    found = []
    prefix = str(directory).rstrip("/") + "/"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            target = line.split(" ")[1]
            target = target.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if target.startswith(prefix) and "/" not in target[len(prefix) :]:
                found.append(Path(target))
    return found
