"""The agent: the first process of every sandbox, started inside its namespaces.

It runs on the sandbox's own Python (stdlib only, Python 3.8+, never imported by the
server: the server passes this file's source to ``python3 -c``). It receives spawn requests
over a SOCK_SEQPACKET socket inherited from the server, each a JSON header with the command's
stdin/stdout/stderr pipe ends (and optionally a cgroup.procs fd) attached as SCM_RIGHTS, starts
the command in a new session, and reports its pid and exit status. When the server closes the
socket the agent kills every session it started and exits, which tears the sandbox down.

The agent is the sandbox's pid 1: it reaps every orphan, and no signal from inside the sandbox
reaches it: it leaves every signal at its default action (Python's own SIGINT handler too),
which the kernel never delivers to a pid namespace's init from inside it, and it catches only
SIGCHLD. It runs as the same user as the commands, so it makes itself non-dumpable: they
cannot ptrace it, nor open its ``/proc`` files (its socket to the server above all).

Each command starts in a Landlock domain of its own (where the kernel has Landlock ABI 2 or
later), which its processes keep, made from a ruleset the agent builds for it once its
``$HOME`` exists: the kernel lets no process look into a process of another domain (its
``/proc/<pid>/mem``, ``environ``, ``fd``..., as ptrace would), and the ruleset lets a
command write everywhere but under ``/home``, where only beneath its own ``$HOME``. So what
one command leaves running can neither read nor forge a later command, nor plant anything
in its ``$HOME`` for it to run. Signals are not scoped: a later command may stop what an
earlier one left running (``pkill``), and a signal forges no result (a command killed says
so). The agent itself is in no domain. A session's shell is one command, so its commands,
and what they leave behind, share its domain and its home: a session is one trust unit.

Its options (a JSON object, its second argument) say how it starts commands: ``nproc``, the
most processes the sandbox's uid may have (RLIMIT_NPROC, for the agent and every command);
``fresh_home``, whether each command gets a new, empty ``$HOME`` of its own (a directory under
``/home``, removed when the command's own process exits, which no other command may write)
instead of sharing ``/home/sandbox`` (then every command may write all of ``/home``).
Each command starts with an OOM score adjustment of ``COMMAND_OOM_SCORE_ADJ``: the agent
raises its own while it forks one (raising needs no privilege; going back down to where it
was, no more than that) through an fd it opened before it made itself non-dumpable. The
server also lowers the agent's own where it may. So the OOM killer picks the agent last.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, Callable, Dict, List, Tuple

Children = Dict[int, Tuple[int, Any, str]]  # pid -> (id, a Popen or a _Started, its own $HOME)

MAX_FDS = 8
PR_SET_DUMPABLE = 4
SYS_CLONE3 = 435  # x86_64 and aarch64 alike
SYS_LANDLOCK_CREATE_RULESET = 444  # x86_64 and aarch64 alike
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_CREATE_RULESET_VERSION = 1
# The rights that change the file system (ABI 1, but REFER: 2, and TRUNCATE: 3).
LANDLOCK_ACCESS_FS_WRITE_FILE = 1 << 1
LANDLOCK_ACCESS_FS_REMOVE_DIR = 1 << 4
LANDLOCK_ACCESS_FS_REMOVE_FILE = 1 << 5
LANDLOCK_ACCESS_FS_MAKE_CHAR = 1 << 6
LANDLOCK_ACCESS_FS_MAKE_DIR = 1 << 7
LANDLOCK_ACCESS_FS_MAKE_REG = 1 << 8
LANDLOCK_ACCESS_FS_MAKE_SOCK = 1 << 9
LANDLOCK_ACCESS_FS_MAKE_FIFO = 1 << 10
LANDLOCK_ACCESS_FS_MAKE_BLOCK = 1 << 11
LANDLOCK_ACCESS_FS_MAKE_SYM = 1 << 12
LANDLOCK_ACCESS_FS_REFER = 1 << 13
LANDLOCK_ACCESS_FS_TRUNCATE = 1 << 14
CLONE_INTO_CGROUP = 0x200000000
HOMES = "/home"
COMMAND_OOM_SCORE_ADJ = b"500"
# The signals whose action a command starts with (the agent's are its own business).
_CHILD_DEFAULTS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGCHLD)


class _CloneArgs(ctypes.Structure):
    _fields_ = [  # struct clone_args, up to its cgroup member (CLONE_ARGS_SIZE_VER2)
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]  # struct landlock_ruleset_attr, ABI 1


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_LIBC: List[Any] = []


def _libc() -> Any:
    """The C library, loaded once (spawning is the agent's hot path)."""
    if not _LIBC:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        _LIBC.append(libc)
    return _LIBC[0]


class _Started:
    """A command started by clone3 (what ``children`` needs of a Popen)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: Any = None


def _recv(sock: socket.socket) -> Tuple[bytes, List[int]]:
    fds = array.array("i")
    msg, ancdata, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def _send(sock: socket.socket, payload: Dict[str, Any]) -> None:
    sock.send(json.dumps(payload).encode())


def _landlock_abi() -> int:
    """The kernel's Landlock ABI, 0 without Landlock."""
    libc = _libc()
    abi = libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION
    )
    return max(int(abi), 0)


def _handled_writes(abi: int) -> int:
    """The rights a command's ruleset handles: every one that changes the file system
    (TRUNCATE where the kernel knows it), none that reads it."""
    handled = (
        LANDLOCK_ACCESS_FS_WRITE_FILE
        | LANDLOCK_ACCESS_FS_REMOVE_DIR
        | LANDLOCK_ACCESS_FS_REMOVE_FILE
        | LANDLOCK_ACCESS_FS_MAKE_CHAR
        | LANDLOCK_ACCESS_FS_MAKE_DIR
        | LANDLOCK_ACCESS_FS_MAKE_REG
        | LANDLOCK_ACCESS_FS_MAKE_SOCK
        | LANDLOCK_ACCESS_FS_MAKE_FIFO
        | LANDLOCK_ACCESS_FS_MAKE_BLOCK
        | LANDLOCK_ACCESS_FS_MAKE_SYM
        | LANDLOCK_ACCESS_FS_REFER
    )
    return handled | (LANDLOCK_ACCESS_FS_TRUNCATE if abi >= 3 else 0)


def _dir_rights(handled: int) -> int:
    """What a command may do beneath a directory it may write: all but make block devices."""
    return handled & ~LANDLOCK_ACCESS_FS_MAKE_BLOCK


def _file_rights(handled: int) -> int:
    """What a command may do to a plain file it may write (the kernel allows a rule on a
    file no directory right)."""
    return handled & (LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_TRUNCATE)


def _writable_places(handled: int, keep_home: bool) -> List[Tuple[int, int]]:
    """Where every command may write, as (an ``O_PATH`` fd, the rights beneath it): each
    top-level entry of ``/`` but ``/home`` (all of it when the sandbox keeps its home), so
    read-only places stay read-only by their mounts, as without Landlock. Symbolic links
    lead into those entries. Opened once: the sandbox cannot change ``/`` (read-only, and no
    mount is its to make)."""
    places = []
    with os.scandir("/") as entries:
        for entry in entries:
            if entry.is_symlink() or (entry.path == HOMES and not keep_home):
                continue
            rights = _dir_rights(handled) if entry.is_dir() else _file_rights(handled)
            fd = os.open(entry.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            places.append((fd, rights))
    return places


def _add_rule(ruleset: int, fd: int, rights: int) -> None:
    rule = _PathBeneath(allowed_access=rights, parent_fd=fd)
    if _libc().syscall(
        SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0
    ):
        error = ctypes.get_errno()
        raise OSError(error, f"cannot add a Landlock rule: {os.strerror(error)}")


def _landlock_ruleset(home: str) -> int:
    """The Landlock ruleset a command is confined by (an fd, for the caller to close), or -1
    where the kernel has no Landlock that fits (ABI 2, the first that can allow a rename into
    another directory: on ABI 1 every one would fail, so there commands go unconfined).

    It handles every right that changes the file system and allows them all (but making
    block devices) everywhere except ``/home``, and beneath the command's own ``home``, its
    ``$HOME`` ("": the sandbox keeps its home, and every command may write all of
    ``/home``). So what an earlier command left running may not create, change or remove
    anything in this command's home (a ``usercustomize.py``, a ``.bashrc``), nor this one in
    any other. Renames and links across directories (REFER) stay allowed wherever both sides
    are, the rights being the same everywhere a command may write. The domain it makes is
    the command's own besides: the kernel keeps the processes of other domains out of its
    processes (``/proc/<pid>/mem``, ``environ``, ``fd``..., as ptrace would)."""
    if _LANDLOCK_ABI[0] < 2:
        return -1
    handled = _handled_writes(_LANDLOCK_ABI[0])
    attr = _RulesetAttr(handled_access_fs=handled)  # (its first member: every ABI knows it)
    libc = _libc()
    ruleset = libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0
    )
    if ruleset < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot create a Landlock ruleset: {os.strerror(error)}")
    try:
        for fd, rights in _WRITABLE:
            _add_rule(ruleset, fd, rights)
        if home:
            fd = os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                _add_rule(ruleset, fd, _dir_rights(handled))
            finally:
                os.close(fd)
    except OSError:
        os.close(ruleset)
        raise
    return int(ruleset)


_LANDLOCK_ABI: List[int] = [0]  # the kernel's, found at start
_WRITABLE: List[Tuple[int, int]] = []  # _writable_places, when there is Landlock


def _child_setup(ruleset: int) -> None:
    """In a command's process before exec: its Landlock domain (``ruleset``, if any: no
    process of another command may look into it, nor it into them), default signal
    actions."""
    # (Landlock needs no_new_privs: every process here has it from the start)
    if ruleset >= 0 and _libc().syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot confine the command: {os.strerror(error)}")
    for number in _CHILD_DEFAULTS:
        signal.signal(number, signal.SIG_DFL)


_OOM_ADJ: List[int] = []  # an fd on the agent's own oom_score_adj, opened while it could


@contextlib.contextmanager
def _commands_oom_score() -> Iterator[None]:
    """The agent's OOM score adjustment at the commands' while it forks one."""
    if not _OOM_ADJ:
        yield
        return
    fd = _OOM_ADJ[0]
    own = os.pread(fd, 32, 0).strip()
    os.pwrite(fd, COMMAND_OOM_SCORE_ADJ, 0)
    try:
        yield
    finally:
        os.pwrite(fd, own, 0)


def _join_cgroup(fd: int, ruleset: int) -> Callable[[], None]:
    def join() -> None:
        _child_setup(ruleset)
        if fd >= 0:
            os.write(fd, b"0")

    return join


def _new_home() -> str:
    """An empty directory for one command's ``$HOME``, under a name no one can guess. A
    ``/home`` an earlier command made unusable (``chmod 000``: modes are no Landlock right,
    and ``/home`` is the sandbox uid's) gets its mode back first."""
    try:
        return tempfile.mkdtemp(prefix="home-", dir=HOMES)
    except PermissionError:
        os.chmod(HOMES, 0o755)
        return tempfile.mkdtemp(prefix="home-", dir=HOMES)


def _remove_home(home: str) -> None:
    """Remove a command's ``$HOME`` in a process of its own, not to hold up the agent (its
    reaping finds that process like any orphan)."""
    if not home:
        return
    with contextlib.suppress(OSError):
        os.rmdir(home)  # most often empty: no process needed
        return
    try:
        os.posix_spawn("/bin/rm", ["rm", "-rf", "--", home], {}, setsigdef=_CHILD_DEFAULTS)
    except OSError:  # (no process left to spare): here, then
        shutil.rmtree(home, ignore_errors=True)


def _clone_into(cgroup_dir: int, header: Dict[str, Any], stdio: List[int], ruleset: int) -> Any:
    """Start the command right in its cgroup (clone3 with CLONE_INTO_CGROUP): no migration,
    which costs ~10 ms once the kernel's RCU has gone idle. None where clone3 cannot; an
    OSError (with ``filename``) where the command cannot start."""
    libc = _libc()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup_dir)
    pid = libc.syscall(SYS_CLONE3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:  # the child: nothing but system calls until exec
        try:
            os.setsid()
            _child_setup(ruleset)  # (before the ruleset's fd is closed)
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            os.closerange(3, err_w)
            os.closerange(err_w + 1, 1 << 16)
            try:
                os.chdir(header["cwd"])
            except OSError as exc:
                exc.filename = header["cwd"]
                raise
            os.execvpe(header["argv"][0], header["argv"], header["env"])
        except BaseException as exc:  # whatever it is, the parent hears of it
            if isinstance(exc, OSError):
                report = [exc.errno, exc.strerror, exc.filename]
            else:
                report = [errno.EINVAL, f"{type(exc).__name__}: {exc}", None]
            os.write(err_w, json.dumps(report).encode())
        finally:
            os._exit(127)
    error = ctypes.get_errno()
    os.close(err_w)
    try:
        if pid < 0:
            if error == errno.EAGAIN:  # the sandbox's process limit: no fork will do
                raise OSError(error, os.strerror(error))
            return None  # no clone3 here (or not allowed): Popen, then a migration
        data = b""
        while True:
            chunk = os.read(err_r, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(err_r)
    if data:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        number, text, filename = json.loads(data)
        raise OSError(number, text, filename)
    return _Started(pid)


def _spawn(
    sock: socket.socket,
    children: Children,
    header: Dict[str, Any],
    fds: List[int],
    fresh_home: bool,
) -> None:
    stdin, stdout, stderr = fds[0], fds[1], fds[2]
    cgroup_fd = fds[3] if len(fds) > 3 else -1
    cgroup_dir = fds[4] if len(fds) > 4 else None
    home = ""
    ruleset = -1
    try:
        if fresh_home:
            home = _new_home()
            header["env"]["HOME"] = home
        ruleset = _landlock_ruleset(home)
        with _commands_oom_score():
            started = (
                None if cgroup_dir is None else _clone_into(cgroup_dir, header, fds[:3], ruleset)
            )
            proc = started or subprocess.Popen(
                header["argv"],
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                cwd=header["cwd"],
                env=header["env"],
                start_new_session=True,
                close_fds=True,
                preexec_fn=_join_cgroup(cgroup_fd, ruleset),
            )
    except (OSError, ValueError) as exc:  # (ValueError: Popen refuses a NUL in argv or env)
        _remove_home(home)
        if not isinstance(exc, OSError):
            exc = OSError(errno.EINVAL, str(exc))
        reply = {
            "id": header["id"],
            "error": f"{exc.strerror or exc}: {exc.filename or ''}",
            "errno": exc.errno,
        }
        if exc.filename == header["cwd"]:
            reply["field"] = "workdir"
        _send(sock, reply)
    else:
        children[proc.pid] = (header["id"], proc, home)
        _send(sock, {"id": header["id"], "pid": proc.pid})
    finally:
        for fd in fds:
            os.close(fd)
        if ruleset >= 0:
            os.close(ruleset)


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
        ident, proc, home = entry
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        _remove_home(home)
        _send(sock, {"id": ident, "exit": code if code >= 0 else 128 - code})


def _kill(children: Children, header: Dict[str, Any]) -> None:
    for ident, proc, _home in children.values():
        if ident == header["id"]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, header.get("signal", signal.SIGKILL))


def _join_limit_cgroups(fds: List[int]) -> None:
    """Enter the sandbox's limit cgroups (every command inherits them)."""
    for fd in fds:
        os.write(fd, b"0")
        os.close(fd)


def main() -> None:
    # Python's SIGINT handler would let any process of the sandbox interrupt the agent: at
    # its default action, the kernel drops it (and every other signal) sent from inside.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(OSError):  # (once non-dumpable, its /proc files are not its)
        _OOM_ADJ.append(os.open("/proc/self/oom_score_adj", os.O_RDWR | os.O_CLOEXEC))
    _not_dumpable()
    sock = socket.socket(fileno=int(sys.argv[1]))
    options = json.loads(sys.argv[2])
    fresh_home = bool(options.get("fresh_home"))
    _LANDLOCK_ABI[0] = _landlock_abi()
    if _LANDLOCK_ABI[0] >= 2:
        _WRITABLE.extend(_writable_places(_handled_writes(_LANDLOCK_ABI[0]), not fresh_home))
    _join_limit_cgroups([int(fd) for fd in sys.argv[3:]])
    nproc = int(options.get("nproc") or 0)
    if nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
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
                for _ident, proc, _home in children.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                return
            header = json.loads(data)
            if header["op"] == "spawn":
                _spawn(sock, children, header, fds, fresh_home)
            elif header["op"] == "kill":
                _kill(children, header)


if __name__ == "__main__":
    main()
