"""The agent: the first process of every sandbox, started inside its namespaces.

It runs on the sandbox's own Python (stdlib only, Python 3.8+, never imported by the
server: the server passes this file's source to ``python3 -c``). It receives spawn requests
over a SOCK_SEQPACKET socket inherited from the server, each a JSON header with the command's
stdin/stdout/stderr pipe ends (and optionally a cgroup.procs fd) attached as SCM_RIGHTS, starts
the command in a new session, and reports its pid and exit status. When the server closes the
socket the agent kills every session it started and exits, which tears the sandbox down.

The agent is the sandbox's pid 1: it reaps every orphan, and signals from inside the sandbox
cannot kill it. It runs as the same user as the commands, so it makes itself non-dumpable:
they cannot ptrace it, nor open its ``/proc`` files (its socket to the server above all).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
from typing import Any, Callable, Dict, List, Tuple

Children = Dict[int, Tuple[int, subprocess.Popen]]  # type: ignore[type-arg]

MAX_FDS = 8
PR_SET_DUMPABLE = 4


def _recv(sock: socket.socket) -> Tuple[bytes, List[int]]:
    fds = array.array("i")
    msg, ancdata, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def _send(sock: socket.socket, payload: Dict[str, Any]) -> None:
    sock.send(json.dumps(payload).encode())


def _join_cgroup(fd: int) -> Callable[[], None]:
    def join() -> None:
        os.write(fd, b"0")

    return join


def _spawn(sock: socket.socket, children: Children, header: Dict[str, Any], fds: List[int]) -> None:
    stdin, stdout, stderr = fds[0], fds[1], fds[2]
    cgroup_fd = fds[3] if len(fds) > 3 else None
    try:
        proc = subprocess.Popen(
            header["argv"],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=header["cwd"],
            env=header["env"],
            start_new_session=True,
            close_fds=True,
            preexec_fn=_join_cgroup(cgroup_fd) if cgroup_fd is not None else None,
        )
    except OSError as exc:
        reply = {
            "id": header["id"],
            "error": f"{exc.strerror or exc}: {exc.filename or ''}",
            "errno": exc.errno,
        }
        if exc.filename == header["cwd"]:
            reply["field"] = "workdir"
        _send(sock, reply)
    else:
        children[proc.pid] = (header["id"], proc)
        _send(sock, {"id": header["id"], "pid": proc.pid})
    finally:
        for fd in fds:
            os.close(fd)


def _not_dumpable() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _reap(sock: socket.socket, children: Children) -> None:
    while True:  # also the orphans that pid 1 inherits
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        entry = children.pop(pid, None)
        if entry is None:
            continue
        ident, proc = entry
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        _send(sock, {"id": ident, "exit": code if code >= 0 else 128 - code})


def _kill(children: Children, header: Dict[str, Any]) -> None:
    for ident, proc in children.values():
        if ident == header["id"]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, header.get("signal", signal.SIGKILL))


def _join_limit_cgroups(fds: List[int]) -> None:
    """Enter the sandbox's limit cgroups (every command inherits them)."""
    for fd in fds:
        os.write(fd, b"0")
        os.close(fd)


def main() -> None:
    _not_dumpable()
    sock = socket.socket(fileno=int(sys.argv[1]))
    _join_limit_cgroups([int(fd) for fd in sys.argv[2:]])
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: Children = {}
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    _send(sock, {"ready": os.getpid()})
    while True:
        for fd, _event in poller.poll():
            if fd == wake_r:
                try:
                    while os.read(wake_r, 256):
                        pass
                except BlockingIOError:
                    pass
                _reap(sock, children)
                continue
            data, fds = _recv(sock)
            if not data:
                for _ident, proc in children.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                return
            header = json.loads(data)
            if header["op"] == "spawn":
                _spawn(sock, children, header, fds)
            elif header["op"] == "kill":
                _kill(children, header)


if __name__ == "__main__":
    main()
