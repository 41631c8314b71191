"""Candidate C's question: can a sandbox made in advance (a pool) get its /workspace, a FUSE
view, after the fact, with no process of its own? And does the FUSE connection serve a
process of a held namespace?

A pooled sandbox is created with an empty placeholder at /workspace; later the host mounts a
FUSE view (a /dev/fuse connection answered here by a minimal responder: INIT, GETATTR of the
root, ENOENT for every lookup), and ``attach`` (open_tree + setns + move_mount) puts it over
the sandbox's /workspace. A command then stats /workspace and looks up a name in it: the
responder sees the requests, with the sandbox's uid and pid.
"""

from __future__ import annotations

import os
import statistics
import struct
import subprocess
import threading
import time
from pathlib import Path

import nsbox

IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
ATTR_OUT = struct.Struct("<QII" + "QQQQQQ" + "IIIIIIIIII")
LOOKUP, FORGET, GETATTR, INIT, BATCH_FORGET = 1, 2, 3, 26, 42
ENOENT, ENOSYS = 2, 38
ATTACH = "/tmp/issue16-bin/attach"

seen: list[tuple[int, int, int]] = []  # (opcode, uid, pid)


def serve(fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 1 << 20)
        except OSError:
            return  # unmounted
        _len, opcode, unique, _node, uid, _gid, pid, _ext, _pad = IN_HEADER.unpack_from(data)
        seen.append((opcode, uid, pid))
        if opcode in (FORGET, BATCH_FORGET):
            continue
        if opcode == INIT:
            _major, _minor, readahead, _flags = struct.unpack_from("<IIII", data, 40)
            body = INIT_OUT.pack(7, 31, readahead, 0, 16, 12, 65536, 1, 0, 0, 0, *([0] * 7))
            error = 0
        elif opcode == GETATTR:
            body = ATTR_OUT.pack(1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0o40755, 2, 0, 0, 0,
                                 4096, 0)
            error = 0
        else:
            body, error = b"", -(ENOENT if opcode == LOOKUP else ENOSYS)
        os.write(fd, OUT_HEADER.pack(16 + len(body), error, unique) + body)


def main() -> None:
    nsbox.build()
    nsbox.subreaper()
    empty = Path("/tmp/issue16-empty")
    empty.mkdir(exist_ok=True)
    view = Path("/tmp/issue16-fuse")
    view.mkdir(exist_ok=True)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    options = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions"
    nsbox._mount("issue16", str(view), "fuse", 0x2 | 0x4, options)  # nosuid, nodev
    threading.Thread(target=serve, args=(fd,), daemon=True).start()
    pool = [f"pool-{i}" for i in range(20)]
    try:
        for name in pool:
            nsbox.create(name, empty)
        times = []
        for name in pool:
            start = time.perf_counter()
            done = subprocess.run(
                [ATTACH, str(nsbox.NSDIR / name / "mnt"), str(view), "/workspace"],
                capture_output=True, text=True,
            )
            times.append((time.perf_counter() - start) * 1000)
            assert done.returncode == 0, done.stderr
        print(f"attach a FUSE view to a held sandbox: p50 {statistics.median(times):.2f} ms "
              f"(n={len(times)}; a process spawn included)")
        seen.clear()
        done = nsbox.run(pool[0], ["sh", "-c", "stat -c 'ino=%i mode=%a' /workspace; "
                                   "cat /workspace/README.md; grep ' /workspace ' /proc/self/mountinfo"])
        print("in the sandbox:", done.returncode, done.stdout.decode(), done.stderr.decode())
        names = {LOOKUP: "LOOKUP", GETATTR: "GETATTR", INIT: "INIT"}
        print("the responder saw:", [(names.get(op, op), uid, pid) for op, uid, pid in seen])
        other = nsbox.run(pool[1], ["stat", "-c", "ino=%i", "/workspace"])
        print("a second pooled sandbox, same view:", other.stdout.decode().strip())
    finally:
        for name in pool:
            nsbox.destroy(name)
        nsbox._umount(str(view))
        nsbox.reap()


if __name__ == "__main__":
    main()
