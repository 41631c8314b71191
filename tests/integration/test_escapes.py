"""Escape attempts from inside a sandbox fail, each in the way it should (real bwrap).

The sandboxes here get the strongest grant there is (``full-access``: a writable workspace),
so that every failure below is the isolation's doing, not a read-only workspace's.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    ExecResult,
    InvalidConfigurationError,
)
from agentfense.testing import ServerProcess

pytestmark = pytest.mark.anyio

# What a command's environment may hold: the sandbox's own base variables, and what sh adds.
ALLOWED_ENV = {"PATH", "HOME", "LANG", "USER", "LOGNAME", "PWD", "SHLVL", "_", "OLDPWD"}


@pytest.fixture
async def sandbox(endpoint: str, project: Path) -> AsyncIterator[AsyncSandbox]:
    async with await AsyncSandbox.from_local(
        project, preset="full-access", endpoint=endpoint
    ) as running:
        yield running


@pytest.fixture
def host_markers(tmp_path: Path, server: ServerProcess) -> Iterator[dict[str, str]]:
    """Secret files on the host, in places a sandbox must not see: ``{path: content}``."""
    token = uuid.uuid4().hex
    places = [
        Path("/root"),
        Path("/var/tmp"),
        server.state_dir,
        server.state_dir / "codebases",
        tmp_path,
        Path("/tmp"),
    ]
    markers: dict[str, str] = {}
    for place in places:
        path = place / f"agentfense-marker-{token}"
        try:
            path.write_text(f"host secret {token}\n")
        except PermissionError:  # /root when the tests do not run as root
            continue
        markers[str(path)] = f"host secret {token}"
    yield markers
    for marked in markers:
        Path(marked).unlink(missing_ok=True)


async def _sh(sandbox: AsyncSandbox, command: str) -> ExecResult:
    return await sandbox.run(command, timeout=60)


async def _python(sandbox: AsyncSandbox, code: str) -> ExecResult:
    """Run ``code`` with the sandbox's python3 (code on stdin: no quoting games)."""
    return await sandbox.exec("python3 -", stdin=code, timeout=60)


# -- files --------------------------------------------------------------------------------------


async def test_host_files_outside_the_binds_are_absent(
    sandbox: AsyncSandbox, host_markers: dict[str, str]
) -> None:
    for path in host_markers:
        result = await _sh(sandbox, f"cat {shlex.quote(path)}")
        assert result.exit_code == 1
        assert "No such file or directory" in result.stderr
        assert result.stdout == ""
    name = Path(next(iter(host_markers))).name
    found = await _sh(sandbox, f"find / -name {name} -not -path '/proc/*' 2>/dev/null; true")
    assert found.stdout == ""
    grepped = await _sh(sandbox, "grep -rls 'host secret' /tmp /home /workspace /etc; true")
    assert grepped.stdout == ""

    root = await _sh(sandbox, "ls -A /")
    assert set(root.stdout.split()) <= {
        "bin", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin",
        "tmp", "usr", "workspace",
    }  # fmt: skip
    # /run holds only the sessions' bash, which may be run but not read.
    found_run = (await _sh(sandbox, "find /run")).stdout
    assert found_run == "/run\n/run/agentfense\n/run/agentfense/bash\n"
    assert (await _sh(sandbox, "head -c1 /run/agentfense/bash")).exit_code != 0
    for hidden in ["/root", "/var", "/opt", "/srv", "/mnt", "/boot", "/sys"]:
        result = await _sh(sandbox, f"ls {hidden}")
        assert result.exit_code != 0
        assert "No such file or directory" in result.stderr
    # The host's /home is replaced by the sandbox's own, holding only its home directory and
    # the command's own $HOME.
    listed = (await _sh(sandbox, 'ls -A /home; echo "$HOME"')).stdout.split()
    assert sorted(listed[:-1]) == sorted(["sandbox", listed[-1].removeprefix("/home/")])
    assert (await _sh(sandbox, "ls -A ~")).stdout == ""


async def test_secrets_of_the_host_etc_are_absent(sandbox: AsyncSandbox) -> None:
    for path in ["/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh", "/etc/ssl/private"]:
        result = await _sh(sandbox, f"ls {path}")
        assert result.exit_code != 0
        assert "No such file or directory" in result.stderr
    # A generated passwd: the sandbox's users, none of the host's.
    passwd = await sandbox.read_file("/etc/passwd")
    assert "sandbox:x:1000:1000" in passwd
    assert {line.split(":")[0] for line in passwd.splitlines()} == {"root", "sandbox", "nobody"}
    # Nothing of the host's /etc that only root may read is bound: no mode without o+r.
    private = await _sh(sandbox, "find -L /etc -type f ! -perm -o=r 2>&1; true")
    assert private.stdout == ""


async def test_dotdot_from_the_workspace_stays_inside(
    sandbox: AsyncSandbox, host_markers: dict[str, str]
) -> None:
    up = await _sh(sandbox, "cd /workspace/../../../..; pwd; ls -A")
    assert up.stdout.splitlines()[0] == "/"
    assert set(up.stdout.splitlines()[1:]) == set((await _sh(sandbox, "ls -A /")).stdout.split())
    assert (await _sh(sandbox, "readlink -f /workspace/../../..")).stdout == "/\n"
    for path in host_markers:
        relative = "/workspace/../../../.." + path
        result = await _sh(sandbox, f"cat {shlex.quote(relative)}")
        assert "No such file or directory" in result.stderr


async def test_symlinks_resolve_inside_the_sandbox_never_on_the_host(
    sandbox: AsyncSandbox, host_markers: dict[str, str], server: ServerProcess
) -> None:
    secret_path = next(iter(host_markers))
    result = await _sh(
        sandbox,
        f"ln -s {secret_path} secret && ln -s /etc/passwd passwd && ln -s /root rootdir"
        " && ln -s / hostroot; cat secret",
    )
    assert result.exit_code == 1
    assert "No such file or directory" in result.stderr
    # /etc/passwd through a link is the sandbox's own, not the host's.
    assert (await _sh(sandbox, "cat passwd")).stdout == await sandbox.read_file("/etc/passwd")
    assert "No such file or directory" in (await _sh(sandbox, "ls rootdir/")).stderr
    assert (await _sh(sandbox, "ls hostroot/")).stdout == (await _sh(sandbox, "ls /")).stdout

    # The server, which does see the host, does not follow the links the sandbox made.
    client = sandbox.client
    for link in ["secret", "passwd"]:
        with pytest.raises(InvalidConfigurationError, match="symbolic link") as refused:
            await client.download_file(sandbox.codebase_id, link)
        assert refused.value.code == 3
    for target in ["rootdir/planted", "hostroot/root/planted", "hostroot/tmp/planted"]:
        with pytest.raises(InvalidConfigurationError, match="not a directory"):
            await client.upload_file(sandbox.codebase_id, target, b"planted by the sandbox")
    assert not await anyio.Path("/root/planted").exists()
    assert not await anyio.Path("/tmp/planted").exists()
    listing = {f.path: f for f in await client.list_files(sandbox.codebase_id, recursive=True)}
    assert {"secret", "passwd", "rootdir", "hostroot"} <= set(listing)
    assert "rootdir/planted" not in listing
    assert not any(path.startswith(("hostroot/", "rootdir/")) for path in listing)
    codebase = await client.get_codebase(sandbox.codebase_id)
    # Links are not files: the count is the project's three files only.
    assert codebase.file_count == 3
    # The host's files are intact.
    for path, content in host_markers.items():
        assert await anyio.Path(path).read_text() == content + "\n"


async def test_the_workspace_of_another_codebase_is_invisible(
    client: AsyncSandboxClient, endpoint: str, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    other = tmp_path / "other"
    other.mkdir()
    (other / f"other-secret-{token}.txt").write_text(f"other {token}\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "mine.txt").write_text("mine\n")
    async with (
        await AsyncSandbox.from_local(other, preset="full-access", endpoint=endpoint) as first,
        await AsyncSandbox.from_local(mine, preset="full-access", endpoint=endpoint) as second,
    ):
        await first.run(f"echo {token} > /tmp/first-{token}; sleep 300 >/dev/null 2>&1 &")
        assert (await second.run("ls -A /workspace")).stdout == "mine.txt\n"
        found = await second.run(f"find / -name '*{token}*' -not -path '/proc/*' 2>/dev/null; true")
        assert found.stdout == ""
        assert (await second.run("ls -A /tmp")).stdout == ""
        # Nor its processes.
        assert "sleep 300" not in (await second.run("ps -eo args")).stdout
        # Nor the codebase store of the server.
        assert first.codebase_id not in (await second.run("cat /proc/self/mountinfo")).stdout


# -- the server's environment ---------------------------------------------------------------------


async def test_the_server_environment_does_not_leak(sandbox: AsyncSandbox) -> None:
    env = await _sh(sandbox, "env")
    names = {line.split("=", 1)[0] for line in env.stdout.splitlines()}
    assert names <= ALLOWED_ENV
    assert "AGENTFENSE_" not in env.stdout
    # Not through /proc either: every process of the sandbox, pid 1 included.
    dump = await _python(
        sandbox,
        "import os\n"
        "for pid in sorted(os.listdir('/proc')):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            data = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "        except OSError as exc:\n"
        "            print(pid, 'unreadable', exc.errno)\n"
        "            continue\n"
        "        for item in data.split(b'\\0'):\n"
        "            if item:\n"
        "                print(pid, item.decode(errors='replace'))\n",
    )
    assert dump.exit_code == 0, dump.stderr
    assert "AGENTFENSE_" not in dump.stdout
    for line in dump.stdout.splitlines():
        _pid, _, item = line.partition(" ")
        if not item.startswith("unreadable"):
            assert item.split("=", 1)[0] in ALLOWED_ENV, line
    assert any(line.startswith("1 ") for line in dump.stdout.splitlines())


async def test_host_paths_do_not_show_in_process_listings(
    sandbox: AsyncSandbox, server: ServerProcess
) -> None:
    cmdlines = await _sh(sandbox, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert str(server.state_dir) not in cmdlines.stdout
    assert "bwrap" not in cmdlines.stdout


# -- network --------------------------------------------------------------------------------------


async def test_there_is_no_network_but_loopback(
    sandbox: AsyncSandbox, server: ServerProcess
) -> None:
    devices = await _sh(sandbox, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert devices.stdout.split() == ["lo"]

    token = uuid.uuid4().hex
    with (
        socket.socket() as tcp,
        socket.socket(socket.AF_UNIX) as abstract,
        socket.socket(socket.AF_UNIX) as unix,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        tcp.setblocking(False)
        port = tcp.getsockname()[1]
        abstract.bind(f"\0agentfense-test-{token}")
        abstract.listen()
        abstract.setblocking(False)
        unix_path = server.state_dir.parent / f"listen-{token[:8]}.sock"
        unix.bind(str(unix_path))
        unix.listen()
        unix.setblocking(False)
        try:
            result = await _python(
                sandbox,
                "import errno, socket\n"
                "def attempt(family, address):\n"
                "    with socket.socket(family) as s:\n"
                "        s.settimeout(5)\n"
                "        try:\n"
                "            s.connect(address)\n"
                "        except OSError as exc:\n"
                "            return errno.errorcode.get(exc.errno, str(exc))\n"
                "        return 'CONNECTED'\n"
                f"print(attempt(socket.AF_INET, ('127.0.0.1', {port})))\n"
                f"print(attempt(socket.AF_UNIX, '\\0agentfense-test-{token}'))\n"
                f"print(attempt(socket.AF_UNIX, {str(unix_path)!r}))\n"
                f"print(attempt(socket.AF_UNIX, {str(server.socket_path)!r}))\n"
                "print(attempt(socket.AF_INET, ('10.0.0.1', 80)))\n",
            )
            assert result.stdout.split() == [
                "ECONNREFUSED",  # the host's loopback is not the sandbox's
                "ECONNREFUSED",  # abstract unix sockets live in the network namespace
                "ENOENT",  # the file system path of a host socket does not exist inside
                "ENOENT",  # nor does the server's own socket
                "ENETUNREACH",  # no route anywhere
            ], result.stderr
            for listening in (tcp, abstract, unix):
                with pytest.raises(BlockingIOError):
                    listening.accept()
        finally:
            unix_path.unlink(missing_ok=True)


# -- privileges -----------------------------------------------------------------------------------


async def test_no_capabilities_no_root_no_new_namespaces(sandbox: AsyncSandbox) -> None:
    status = await sandbox.read_file("/proc/self/status")
    caps = dict(line.split(":\t", 1) for line in status.splitlines() if line.startswith("Cap"))
    assert caps == {
        name: "0000000000000000" for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    }
    assert (await _sh(sandbox, "id -u; id -g")).stdout == "1000\n1000\n"

    for command in [
        "unshare -r true",
        "unshare -U true",
        "unshare -m true",
        "unshare -n true",
        "unshare -rm sh -c 'mount -t tmpfs none /workspace'",
        "mount -t tmpfs none /tmp",
        "mount --bind /workspace /tmp",
        "umount /workspace",
        "chroot / true",
    ]:
        result = await _sh(sandbox, command)
        assert result.exit_code != 0, command
        assert result.stderr, command
    setuid = await _python(
        sandbox,
        "import errno, os\n"
        "for call in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.setgroups([0])):\n"
        "    try:\n"
        "        call()\n"
        "        print('ALLOWED')\n"
        "    except OSError as exc:\n"
        "        print(errno.errorcode[exc.errno])\n",
    )
    # uid 0 does not exist in the sandbox's user namespace; groups cannot be set in it at all.
    assert setuid.stdout.split() == ["EINVAL", "EINVAL", "EPERM"], setuid.stderr
    # Still the same unprivileged user afterwards, and the workspace still mounted as before.
    assert (await _sh(sandbox, "id -u; ls /workspace")).stdout.startswith("1000\n")


async def test_system_directories_are_read_only(endpoint: str, project: Path) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=endpoint
    ) as sandbox:
        for command in [
            "touch /usr/bin/evil",
            "touch /etc/evil",
            "touch /evil",
            "echo x >> /etc/passwd",
            "mkdir /newdir",
            "rm -f /usr/bin/env",
            "chmod 777 /usr/bin",
            "ln -s /tmp /lib/evil",
        ]:
            result = await _sh(sandbox, command)
            assert result.exit_code != 0, command
            # Refused for being read-only, or (to the sandbox's own uid) not its to change.
            assert re.search("Read-only file system|Permission denied", result.stderr), (
                command,
                result.stderr,
            )
        # The workspace of a read-everything policy is the codebase bound read-only.
        for command in ["touch /workspace/evil", "rm /workspace/README.md"]:
            result = await _sh(sandbox, command)
            assert result.exit_code != 0, command
            assert "Read-only file system" in result.stderr, (command, result.stderr)
        # The places that are the sandbox's own stay writable.
        ok = await _sh(sandbox, "touch /tmp/ok ~/ok && echo fine")
        assert ok.stdout == "fine\n"


# -- processes ------------------------------------------------------------------------------------


async def test_host_processes_are_invisible_and_unreachable(
    sandbox: AsyncSandbox, server: ServerProcess
) -> None:
    listing = await _sh(sandbox, "ps -eo pid=,args=")
    processes = dict(line.strip().split(None, 1) for line in listing.stdout.splitlines())
    pids = [int(pid) for pid in processes]
    # The commands' init, this command's guard, the shell and ps: nothing else, nothing of
    # the host.
    assert processes.pop("1") == "init"
    assert processes.pop("2") == "guard"
    assert all("ps -eo pid=,args=" in args for args in processes.values()), listing.stdout
    assert "agentfense" not in listing.stdout
    assert "pytest" not in listing.stdout
    for pid in (server.process.pid, os.getpid()):
        assert pid not in pids
        result = await _sh(sandbox, f"kill -9 {pid}; kill -0 {pid}")
        assert result.exit_code != 0
        assert "No such process" in result.stderr
    assert server.process.poll() is None
    # Killing every process it can see, init included, does not reach the host (and the
    # sandbox survives: the init of a pid namespace cannot be killed from inside).
    await _sh(sandbox, "kill -9 -1; kill -9 1; true")
    assert server.process.poll() is None
    assert (await _sh(sandbox, "echo alive")).stdout == "alive\n"


async def test_pid_1_cannot_be_traced_or_inspected(sandbox: AsyncSandbox) -> None:
    # Pid 1 is the init of the commands' pid namespace; a command's parent is its guard
    # (which holds the status pipe to the server): neither may be traced or looked into.
    result = await _python(
        sandbox,
        "import ctypes, errno, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "PTRACE_ATTACH, PTRACE_DETACH = 16, 17\n"
        "guard = os.getppid()\n"
        "while not open(f'/proc/{guard}/cmdline', 'rb').read().startswith(b'guard'):\n"
        "    guard = int(open(f'/proc/{guard}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "for pid in (1, guard):\n"
        "    if libc.ptrace(PTRACE_ATTACH, pid, 0, 0) == 0:\n"
        "        os.waitpid(pid, 0)\n"
        "        libc.ptrace(PTRACE_DETACH, pid, 0, 0)\n"
        "        print('ATTACHED')\n"
        "    else:\n"
        "        print(errno.errorcode[ctypes.get_errno()])\n"
        "    for name in ('environ', 'fd', 'fd/0', 'fd/3', 'mem', 'root', 'cwd', 'exe'):\n"
        "        try:\n"
        "            if name == 'mem':\n"
        "                open(f'/proc/{pid}/mem', 'rb').close()\n"
        "            elif name == 'environ':\n"
        "                open(f'/proc/{pid}/environ', 'rb').read()\n"
        "            elif name == 'fd':\n"
        "                os.listdir(f'/proc/{pid}/fd')\n"
        "            else:\n"
        "                os.readlink(f'/proc/{pid}/{name}')\n"
        "            print(name, 'OPEN')\n"
        "        except OSError as exc:\n"
        "            print(name, errno.errorcode[exc.errno])\n"
        "    try:\n"
        "        os.kill(pid, 9)\n"
        "        print('killed')\n"
        "    except OSError as exc:\n"
        "        print('kill', errno.errorcode[exc.errno])\n",
    )
    shut = ["environ", "fd", "fd/0", "fd/3", "mem", "root", "cwd", "exe"]
    assert result.stdout.splitlines() == [
        "EPERM",
        *(f"{name} EACCES" for name in shut),
        "kill EPERM",  # the init is root's (with no capability)
        "EPERM",
        *(f"{name} EACCES" for name in shut),
        "kill EPERM",  # the guard is root's
    ], result.stderr
    assert (await _sh(sandbox, "echo alive")).stdout == "alive\n"
    # Nor through their open files (which on the host lead to the server's state directory).
    for fd in range(4):
        for pid in ("1", "$PPID"):
            attempt = await _sh(sandbox, f"echo pwned >> /proc/{pid}/fd/{fd}")
            assert attempt.exit_code != 0
            assert "Permission denied" in attempt.stderr


async def test_kernel_settings_cannot_be_written(sandbox: AsyncSandbox) -> None:
    assert "No such file or directory" in (await _sh(sandbox, "ls /sys")).stderr
    # Each probe opens for writing and writes nothing: should one ever succeed, the host is
    # unharmed. (The sandbox runs as an unprivileged host uid; /proc/sys is read-only besides.)
    result = await _python(
        sandbox,
        "import errno, os\n"
        "for path in ['/proc/sys/kernel/core_pattern', '/proc/sys/kernel/modprobe',\n"
        "             '/proc/sys/kernel/randomize_va_space', '/proc/sys/vm/drop_caches',\n"
        "             '/proc/sys/fs/file-max', '/proc/sys/net/ipv4/ip_forward',\n"
        "             '/proc/sysrq-trigger', '/proc/kcore']:\n"
        "    try:\n"
        "        os.close(os.open(path, os.O_WRONLY))\n"
        "        print(path, 'WRITABLE')\n"
        "    except OSError as exc:\n"
        "        print(path, errno.errorcode[exc.errno])\n",
    )
    outcome = dict(line.split() for line in result.stdout.splitlines())
    assert len(outcome) == 8, result.stderr
    assert "WRITABLE" not in outcome.values()
    for path, error in outcome.items():
        if path.startswith("/proc/sys/"):  # read-only; some do not exist on every kernel
            assert error in {"EROFS", "EACCES", "ENOENT"}, path
    assert outcome["/proc/sys/kernel/core_pattern"] in {"EROFS", "EACCES"}
    assert (await _sh(sandbox, "find /proc/sys -type f -writable")).stdout == ""
    # Still readable, for the programs that look.
    assert (await sandbox.read_file("/proc/sys/kernel/ostype")) == "Linux\n"


async def test_device_nodes_cannot_be_changed(sandbox: AsyncSandbox) -> None:
    before = os.stat("/dev/null")
    # The sandbox's nodes are the host's (bound by bwrap), owned by the host's root, not by
    # the sandbox's uid: neither their mode nor their times can be changed.
    changed = await _sh(sandbox, "chmod 000 /dev/null; touch -d 2001-01-01 /dev/null /dev/zero")
    assert changed.stderr.count("Operation not permitted") == 3, changed.stderr
    after = os.stat("/dev/null")
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    # And they work.
    check = await _sh(sandbox, "echo gone > /dev/null && head -c 4 /dev/urandom | wc -c")
    assert check.stdout == "4\n"


async def test_there_are_no_disk_or_memory_devices(sandbox: AsyncSandbox) -> None:
    # Only the harmless character devices: no disks, no memory, no kernel messages.
    devices = await _sh(sandbox, "find /dev \\( -type b -o -type c \\) | sort")
    assert set(devices.stdout.split()) <= {
        "/dev/full", "/dev/null", "/dev/ptmx", "/dev/random", "/dev/tty", "/dev/urandom",
        "/dev/zero", "/dev/pts/ptmx",
    }  # fmt: skip
