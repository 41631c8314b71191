"""``python -m agentfense.fs MOUNTPOINT CONTROL_FD``: the permission filesystem process.

Started and supervised by the server: it mounts one FUSE file system at MOUNTPOINT, serves the
views the server adds over the control socket, and unmounts when that socket closes.
"""

from __future__ import annotations

import functools
import logging
import socket
import sys

import pyfuse3
import trio

from .control import serve_control
from .operations import PermissionFS

# No default_permissions: levels are per path, so a child may be writable in a read-only
# directory; every operation checks the policy itself (operations.py).
MOUNT_OPTIONS = {"fsname=agentfense", "subtype=agentfense", "allow_other", "nosuid", "nodev"}


async def run(mountpoint: str, control: socket.socket) -> None:
    fs = PermissionFS()
    pyfuse3.init(fs, mountpoint, MOUNT_OPTIONS)
    try:
        control.send(b'{"ready": true}')
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(pyfuse3.main, min_tasks=1, max_tasks=1))
            await serve_control(fs, control)
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="agentfense-fs: %(message)s")
    mountpoint, fd = sys.argv[1], int(sys.argv[2])
    control = socket.socket(fileno=fd)
    trio.run(run, mountpoint, control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
