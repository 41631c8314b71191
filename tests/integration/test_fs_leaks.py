"""A leak battery: every way to observe or alter a hidden or read-only path from inside a real
sandbox fails, and the codebase is unchanged afterwards (real server, bwrap and FUSE).

The sandboxes run the ``agent-safe`` preset (read everything, write ``/output`` and
``/tmp``, hide secrets) plus a writable ``/work`` area that holds hidden files of its own, so
that what is refused below is refused for being hidden or read-only, not for a lack of any
write access. Every command's output is checked for the secrets' content (a random marker),
and each test compares the owner's view (the codebase's files on the host) before and after:
no path below ``write`` changed, and nothing appeared outside the writable areas.

Techniques (numbered in the comments below): 1 stat/lstat, 2 open, 3 O_PATH/opendir/chdir,
4 access, 5 readlink, 6 xattrs, 7 ``..``, 8 ``/proc/self/{cwd,root}``, 9 alterations of hidden
paths (unlink, rmdir, truncate, chmod, utime, rename, link), 10 listings (getdents, ``ls -aR``,
``find``), 11 ``du``/``tar``/``grep -r``, 12 ``find -inum`` of hidden inodes, 13 directory link
counts, 14 ``/proc/self/mounts`` and mountinfo, 15 ``/proc/self/fd``, 16 statfs/``df``,
17 existence oracle (same errno for an existing hidden name and an absent one), 18 rename onto
hidden names, 19 hard links from/to hidden and read-only files, 20 symlinks to hidden paths,
21 new files matching hidden patterns, 22 case variants, 23 names an implementation might
treat specially, 24 rmdir of a parent of hidden files, 25 ``rm -r`` of such a parent, 26 renaming
such a parent, 27 truncate/chmod/utime/chown of read-only files, 28 writing opens (O_TRUNC...),
29 writing through a read-only fd (and /proc/self/fd re-opens), 30 mmap, 31 fallocate,
32 copy_file_range/sendfile/FICLONE, 33 special files and new entries in read-only
directories, 34 shell tools (``sed -i``, ``cp``, ``dd``, ``touch``...), 35 host symlinks planted
for the server, 36 racing commits, 37 deletions that stay deleted, 38 writes through a file
descriptor that outlives its name, 39 names mimicking the commit's own temporary file,
40 the sandbox file API, 41 ``view``-level files, 42 set-user-ID and set-group-ID bits,
43 FIFOs and sockets handed to the file API.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentfense import (
    AsyncSandbox,
    ExecResult,
    InvalidConfigurationError,
    Permission,
    PermissionDeniedError,
    PermissionRule,
    SandboxError,
    get_preset,
)
from agentfense.policy import Policy
from agentfense.testing import ServerProcess

pytestmark = pytest.mark.anyio

WORK_RULE = PermissionRule("/work/**", Permission.WRITE, priority=10)
POLICY = Policy([*get_preset("agent-safe"), WORK_RULE])

# Hidden by the preset's secret rules (the last one is uploaded by the test: the default
# ignore patterns of from_local skip .git).
HIDDEN_FILES = [
    ".env",
    ".env.production",
    "secrets/token",
    "deep/a/b/key.pem",
    "ro/secrets/inner",
    "work/.env",
    "work/keep/id.key",
    "work/mixed/b.key",
    "work/cfg/secrets/api",
    ".git/config",
]
HIDDEN_DIRS = ["secrets", "ro/secrets", "work/cfg/secrets", ".git"]
HIDDEN = HIDDEN_FILES + HIDDEN_DIRS
HIDDEN_NAMES = {".env", ".env.production", "secrets", "key.pem", "inner", "id.key", "b.key"}
HIDDEN_NAMES |= {"api", ".git"}
READ_ONLY_FILES = ["ro/notes.txt", "ro/sub/x.txt", "src/app.py", "deep/a/b/visible.txt"]
VISIBLE = {
    "deep", "deep/a", "deep/a/b", "deep/a/b/visible.txt", "output", "output/keep.txt", "ro",
    "ro/notes.txt", "ro/sub", "ro/sub/x.txt", "src", "src/app.py", "work",
    "work/draft.txt", "work/keep", "work/mixed", "work/mixed/a.txt", "work/cfg",
    "work/cfg/settings.ini",
}  # fmt: skip

Snapshot = dict[str, tuple[Any, ...]]


def _make_project(root: Path, marker: str) -> None:
    for rel in HIDDEN_FILES[:-1]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{marker} {rel}\n")
    for rel in VISIBLE:
        path = root / rel
        if "." in path.name:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"plain {rel}\n")
        else:
            path.mkdir(parents=True, exist_ok=True)


def _snapshot_sync(root: Path) -> Snapshot:
    """Every entry of a host tree: type, content or target, mode (and a file's mtime)."""
    tree: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                tree[rel] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                tree[rel] = ("special", stat.S_IFMT(st.st_mode))
    return tree


async def _snapshot(root: Path) -> Snapshot:
    return await anyio.to_thread.run_sync(_snapshot_sync, root)


@dataclass
class Fenced:
    sandbox: AsyncSandbox
    files: Path  # the codebase's tree on the host (the owner's view)
    before: Snapshot
    marker: str

    async def sh(self, command: str) -> ExecResult:
        result = await self.sandbox.run(command, timeout=60)
        self._no_secret(result)
        return result

    async def probe(self, body: str, **args: Any) -> dict[str, Any]:
        """Run ``body`` with :data:`PRELUDE` in the sandbox's python; its ``OUT`` dict."""
        result = await self.sandbox.exec(
            f"python3 - {shlex.quote(json.dumps(args))}", stdin=PRELUDE + body + EPILOGUE
        )
        self._no_secret(result)
        assert result.exit_code == 0, result.stderr
        out: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
        return out

    def _no_secret(self, result: ExecResult) -> None:
        assert self.marker not in result.stdout + result.stderr

    async def assert_protected(self) -> Snapshot:
        """Nothing below ``write`` changed in the codebase, nothing new appeared there."""
        after = await _snapshot(self.files)
        for rel, entry in self.before.items():
            if POLICY.level(rel) is not Permission.WRITE:
                assert after.get(rel) == entry, rel
        for rel in after.keys() - self.before.keys():
            assert POLICY.level(rel) is Permission.WRITE, rel
        return after


PRELUDE = r"""
import errno, fcntl, json, mmap, os, socket, stat, sys
os.chdir("/workspace")
ARGS = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
OUT = {}
def attempt(label, fn):
    try:
        fn()
    except OSError as exc:
        OUT[label] = errno.errorcode.get(exc.errno, str(exc.errno))
    else:
        OUT[label] = "OK"
    os.chdir("/workspace")
"""
EPILOGUE = "\nprint(json.dumps(OUT))\n"


@pytest.fixture
async def fenced(endpoint: str, server: ServerProcess, tmp_path: Path) -> AsyncIterator[Fenced]:
    marker = f"s3cr3t-{uuid.uuid4().hex}"
    root = tmp_path / "project"
    _make_project(root, marker)
    async with await AsyncSandbox.from_local(
        root, preset="agent-safe", permissions=[WORK_RULE], endpoint=endpoint
    ) as sandbox:
        await sandbox.client.upload_file(
            sandbox.codebase_id, ".git/config", f"[core]\n# {marker}\n".encode()
        )
        files = server.state_dir / "codebases" / sandbox.codebase_id / "files"
        before = await _snapshot(files)
        assert set(HIDDEN) | VISIBLE == set(before)
        yield Fenced(sandbox, files, before, marker)


# -- observing ------------------------------------------------------------------------------------


OBSERVE = r"""
for rel in ARGS["hidden"]:
    attempt(f"stat {rel}", lambda: os.stat(rel))  # 1
    attempt(f"lstat {rel}", lambda: os.lstat(rel))
    attempt(f"open {rel}", lambda: os.open(rel, os.O_RDONLY))  # 2
    attempt(f"open-nofollow {rel}", lambda: os.open(rel, os.O_RDONLY | os.O_NOFOLLOW))
    attempt(f"O_PATH {rel}", lambda: os.open(rel, os.O_PATH))  # 3
    attempt(f"opendir {rel}", lambda: os.open(rel, os.O_RDONLY | os.O_DIRECTORY))
    attempt(f"chdir {rel}", lambda: os.chdir(rel))
    attempt(f"scandir {rel}", lambda: list(os.scandir(rel)))
    OUT[f"access {rel}"] = os.access(rel, os.F_OK)  # 4
    attempt(f"readlink {rel}", lambda: os.readlink(rel))  # 5
    attempt(f"getxattr {rel}", lambda: os.getxattr(rel, "user.x"))  # 6
    attempt(f"listxattr {rel}", lambda: os.listxattr(rel))
    attempt(f"setxattr {rel}", lambda: os.setxattr(rel, "user.x", b"1"))
    attempt(f"removexattr {rel}", lambda: os.removexattr(rel, "user.x"))
    attempt(f"dotdot {rel}", lambda: os.stat("src/../" + rel))  # 7
    attempt(f"deep dotdot {rel}", lambda: open("deep/a/b/../../../" + rel).read())
    attempt(f"workspace dotdot {rel}", lambda: os.stat("/workspace/../workspace/" + rel))
    attempt(f"proc cwd {rel}", lambda: open("/proc/self/cwd/" + rel).read())  # 8
    attempt(f"proc root {rel}", lambda: os.stat("/proc/self/root/workspace/" + rel))
    attempt(f"unlink {rel}", lambda: os.unlink(rel))  # 9
    attempt(f"rmdir {rel}", lambda: os.rmdir(rel))
    attempt(f"truncate {rel}", lambda: os.truncate(rel, 0))
    attempt(f"chmod {rel}", lambda: os.chmod(rel, 0o777))
    attempt(f"utime {rel}", lambda: os.utime(rel, (0, 0)))
    attempt(f"rename away {rel}", lambda: os.rename(rel, "work/stolen"))
    attempt(f"link away {rel}", lambda: os.link(rel, "work/stolen"))

# 10, 13: a walk of everything visible, with the link count of every directory.
walked, nlinks = [], {}
for dirpath, dirnames, filenames in os.walk("/workspace"):
    walked += [os.path.join(dirpath, n)[len("/workspace/"):] for n in dirnames + filenames]
    nlinks[dirpath] = [os.stat(dirpath).st_nlink, len(dirnames)]
OUT["walk"] = sorted(walked)
OUT["nlinks"] = nlinks
# 15: the open files of a process name workspace paths only.
fds = [os.open(path, os.O_RDONLY) for path in ("ro/notes.txt", "work", "src/app.py")]
OUT["fd links"] = sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in fds)
# 16
vfs = os.statvfs("/workspace")
OUT["statvfs"] = [vfs.f_namemax, vfs.f_bsize]
"""


async def test_hidden_paths_cannot_be_observed_or_touched(fenced: Fenced) -> None:
    out = await fenced.probe(OBSERVE, hidden=HIDDEN)
    for rel in HIDDEN:
        results = {k: v for k, v in out.items() if k.endswith(f" {rel}")}
        assert results.pop(f"access {rel}") is False
        assert set(results.values()) == {"ENOENT"}, (rel, results)
    assert set(out["walk"]) == VISIBLE
    # A directory's link count counts its subdirectories: the hidden ones must not show.
    for directory, (nlink, subdirs) in out["nlinks"].items():
        assert nlink in (1, 2 + subdirs), (directory, nlink, subdirs)
    assert out["fd links"] == [
        "/workspace/ro/notes.txt",
        "/workspace/src/app.py",
        "/workspace/work",
    ]
    assert out["statvfs"][0] == 255

    listings = {
        "ls": "ls -aR /workspace",  # 10
        "find": "find /workspace -mindepth 1 -printf '%P\\n'",
        "find-hidden": "find /workspace \\( -name '.env*' -o -name secrets -o -name '*.pem' \\)",
        "du": "du -a /workspace",  # 11
        "tar": "tar cf - -C /workspace . 2>/dev/null | tar tf -",
        "grep": "grep -rl s3cr3t /workspace; true",
        "mounts": "cat /proc/self/mounts /proc/self/mountinfo",  # 14
        "df": "df -a; stat -f /workspace",  # 16
    }
    seen: dict[str, str] = {}
    for name, command in listings.items():
        result = await fenced.sh(command)
        seen[name] = result.stdout
        words = {Path(word).name for word in result.stdout.replace("/", " /").split()}
        assert not words & HIDDEN_NAMES, (name, words & HIDDEN_NAMES)
    assert set(seen["find"].split()) == VISIBLE
    assert seen["find-hidden"] == ""
    assert {p.removeprefix("./").rstrip("/") for p in seen["tar"].split()} - {"", "."} == VISIBLE
    assert seen["grep"] == ""
    # The mount table shows the view as the fuse mount's subtree, not the codebase's host path.
    # (It does show host paths of other binds: /usr, files of /etc, the generated passwd.)
    assert str(fenced.files) not in seen["mounts"] + seen["df"]
    assert fenced.sandbox.codebase_id not in seen["mounts"]
    assert " /workspace fuse.agentfense " in seen["mounts"]

    # 12: the hidden files' inode numbers on the host lead to nothing in the view.
    inodes = [(fenced.files / rel).stat().st_ino for rel in HIDDEN_FILES]
    found = await fenced.sh(" ".join(f"find /workspace -inum {ino};" for ino in inodes))
    assert found.stdout == ""
    await fenced.assert_protected()


# -- creating, renaming and linking --------------------------------------------------------------


CREATE = r"""
ops = {
    "create": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)),
    "create-trunc": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)),
    "mkdir": os.mkdir,
    "symlink": lambda p: os.symlink("draft.txt", p),
    "hardlink": lambda p: os.link("work/draft.txt", p),  # 19
    "rename": lambda p: os.rename("work/draft.txt", p),  # 18
    "rename-dir": lambda p: os.rename("work/tree", p),
    "mkfifo": os.mkfifo,
    "socket": lambda p: socket.socket(socket.AF_UNIX).bind(p),
    "stat": os.stat,
    "unlink": os.unlink,
    "rmdir": os.rmdir,
}
# 17: an existing hidden name and an absent name of the same pattern answer alike.
os.makedirs("work/tree/x")
for existing, absent in ARGS["pairs"]:
    for name, op in ops.items():
        attempt(f"{name} {existing}", lambda: op(existing))
        attempt(f"{name} {absent}", lambda: op(absent))
# 19: links to and from read-only files, from hidden ones.
attempt("link from read-only", lambda: os.link("ro/notes.txt", "work/ro-link"))
attempt("link into read-only", lambda: os.link("work/draft.txt", "ro/link"))
attempt("link from hidden", lambda: os.link("work/.env", "work/env-link"))
# 20: symlinks to hidden paths resolve to nothing.
for i, target in enumerate(ARGS["link_targets"]):
    os.symlink(target, f"work/to-hidden-{i}")
    attempt(f"read through {target}", lambda: open(f"work/to-hidden-{i}").read())
    attempt(f"list through {target}", lambda: os.listdir(f"work/to-hidden-{i}/"))
# 22, 23: a name is creatable exactly when the policy says so.
for name in ARGS["names"]:
    def create(name=name):
        with open("work/" + name, "x") as f:
            f.write("plain\n")
    attempt(f"name {name}", create)
"""

PAIRS = [
    ("work/.env", "work/.env.local"),
    (".env", ".env.staging"),
    ("work/keep/id.key", "work/keep/new.key"),
    ("work/mixed/b.key", "work/mixed/c.pem"),
    ("work/cfg/secrets", "work/secrets"),
    ("secrets/token", "secrets/new"),
    ("work/cfg/secrets/api", "work/cfg/secrets/new"),
    (".git/config", ".git/HEAD"),
]
LINK_TARGETS = ["../.env", ".env", "/workspace/secrets/token", "../secrets", "cfg/secrets/api"]
NAMES = [
    # 22: the preset's secret patterns match any case: these are hidden...
    ".ENV", ".Env.local", "X.KEY", "x.Key", "Secrets", "key.PEM",
    # ...and so are these.
    "x.key", ".env.local", ".env ", "credentials.json", "y.pem",
    # 23: names an overlay or a commit might treat specially are ordinary files.
    ".wh..env", ".wh.draft.txt", ".wh..wh..opq", ".agentfense-commit", ".agentfense-commit-1",
    "upper", "lower", "upper.deleted.json", "deleted.json", "a\n.env", "...", "....env",
    "back\\slash", " .env", "x" * 255,
]  # fmt: skip


async def test_hidden_names_cannot_be_created_or_taken_over(fenced: Fenced) -> None:
    out = await fenced.probe(CREATE, pairs=PAIRS, link_targets=LINK_TARGETS, names=NAMES)
    for existing, absent in PAIRS:
        for op in ("create", "create-trunc", "mkdir", "symlink", "hardlink", "rename"):
            assert out[f"{op} {existing}"] == out[f"{op} {absent}"] != "OK", (op, existing)
        for op in ("rename-dir", "mkfifo", "socket", "stat", "unlink", "rmdir"):
            assert out[f"{op} {existing}"] == out[f"{op} {absent}"] != "OK", (op, existing)
    assert out["link from read-only"] == "EACCES"
    assert out["link into read-only"] == "EACCES"
    assert out["link from hidden"] == "ENOENT"
    for target in LINK_TARGETS:
        assert out[f"read through {target}"] == "ENOENT"
        assert out[f"list through {target}"] == "ENOENT"
    for name in NAMES:
        allowed = POLICY.level(f"work/{name}") is Permission.WRITE
        assert out[f"name {name}"] == ("OK" if allowed else "EACCES"), name
    assert out["name .wh..env"] == out["name " + "x" * 255] == "OK"
    assert out["name x.key"] == out["name .ENV"] == out["name .env "] == "EACCES"

    # Committed as ordinary files: nothing was deleted or uncovered by the special names.
    listing = await fenced.sh("ls -Ab work; cat work/.wh..env work/.agentfense-commit; cat .env")
    assert "No such file or directory" in listing.stderr
    shown = set(listing.stdout.splitlines())
    assert {"draft.txt", "cfg", "keep", "mixed", ".wh..env", ".wh.draft.txt", "upper"} <= shown
    assert not shown & HIDDEN_NAMES
    after = await fenced.assert_protected()
    for name in NAMES:
        if POLICY.level(f"work/{name}") is Permission.WRITE:
            assert after[f"work/{name}"][:2] == ("file", b"plain\n"), name
    assert after["work/draft.txt"] == fenced.before["work/draft.txt"]
    # The symlinks are committed as links (their targets are the sandbox's business).
    assert after["work/to-hidden-0"] == ("link", "../.env")


# -- directories holding hidden files -------------------------------------------------------------


async def test_parents_of_hidden_files_keep_them(fenced: Fenced) -> None:
    # 24: the only child of work/keep is hidden: the directory is empty to the sandbox, so
    # rmdir succeeds (an ENOTEMPTY would tell), and the hidden file stays in the codebase.
    removed = await fenced.sh("rmdir work/keep && echo removed; ls -A work")
    assert removed.stdout.splitlines()[0] == "removed", removed.stderr
    assert "keep" not in removed.stdout.splitlines()[1:]
    # 25: recursive removal takes what the sandbox sees, never the hidden file.
    await fenced.sh("rm -rf work/mixed")
    # 26: a renamed directory does not take its hidden entries along, nor show them.
    moved = await fenced.sh("mv work/cfg work/cfg2 && ls -A work/cfg2; ls work/cfg2/secrets")
    assert moved.stdout == "settings.ini\n"
    assert "No such file or directory" in moved.stderr
    later = await fenced.sh("ls -A work; ls -A work/cfg2; ls work/keep work/mixed work/cfg")
    assert later.stdout.split() == ["cfg2", "draft.txt", "settings.ini"]
    assert later.stderr.count("No such file or directory") == 3

    after = await fenced.assert_protected()
    for rel in ("work/keep/id.key", "work/mixed/b.key", "work/cfg/secrets/api"):
        assert after[rel] == fenced.before[rel]
    assert "work/mixed/a.txt" not in after
    assert "work/cfg/settings.ini" not in after
    assert after["work/cfg2/settings.ini"][1] == b"plain work/cfg/settings.ini\n"
    assert not any(rel.startswith("work/cfg2/secrets") for rel in after)

    # Made again, the directories start empty: the hidden files stay out of sight.
    again = await fenced.sh("mkdir work/keep work/cfg && ls -A work/keep work/cfg")
    assert again.exit_code == 0, again.stderr
    assert again.stdout.split() == ["work/cfg:", "work/keep:"]
    again = await fenced.sh("ls -A work/keep work/cfg; rmdir work/keep && echo ok")
    assert again.stdout.split() == ["work/cfg:", "work/keep:", "ok"], again.stderr
    after = await fenced.assert_protected()
    assert after["work/keep/id.key"] == fenced.before["work/keep/id.key"]


# -- read-only files ------------------------------------------------------------------------------


READ_ONLY = r"""
ro = "ro/notes.txt"
attempt("truncate", lambda: os.truncate(ro, 0))  # 27
attempt("chmod", lambda: os.chmod(ro, 0o666))
attempt("chmod dir", lambda: os.chmod("ro", 0o777))
attempt("utime", lambda: os.utime(ro, (0, 0)))
attempt("touch", lambda: os.utime(ro))
attempt("chown", lambda: os.chown(ro, os.getuid(), os.getgid()))
attempt("setxattr", lambda: os.setxattr(ro, "user.x", b"1"))
attempt("removexattr", lambda: os.removexattr(ro, "user.x"))
for label, flags in [  # 28
    ("O_WRONLY", os.O_WRONLY), ("O_RDWR", os.O_RDWR), ("O_APPEND", os.O_WRONLY | os.O_APPEND),
    ("O_TRUNC", os.O_RDONLY | os.O_TRUNC), ("O_CREAT", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
]:
    attempt(label, lambda: os.open(ro, flags))
fd = os.open(ro, os.O_RDONLY)  # 29
attempt("write", lambda: os.write(fd, b"x"))
attempt("pwrite", lambda: os.pwrite(fd, b"x", 0))
attempt("ftruncate", lambda: os.ftruncate(fd, 0))
attempt("fchmod", lambda: os.fchmod(fd, 0o666))
attempt("futime", lambda: os.utime(fd, (0, 0)))
attempt("fsetxattr", lambda: os.setxattr(fd, "user.x", b"1"))
attempt("fcntl append then write", lambda: (fcntl.fcntl(fd, fcntl.F_SETFL, os.O_APPEND),
                                            os.write(fd, b"x")))
attempt("reopen for writing", lambda: os.open(f"/proc/self/fd/{fd}", os.O_WRONLY))
attempt("mmap", lambda: mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))  # 30
attempt("fallocate", lambda: os.posix_fallocate(fd, 0, 4096))  # 31
src = os.open("work/payload", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(src, b"PAYLOAD")
attempt("copy_file_range", lambda: os.copy_file_range(src, fd, 7, 0, 0))  # 32
attempt("sendfile", lambda: os.sendfile(fd, src, 0, 7))
attempt("FICLONE", lambda: fcntl.ioctl(fd, 0x40049409, src))
attempt("rename onto", lambda: os.rename("work/payload", ro))
attempt("rename away", lambda: os.rename(ro, "work/moved"))
attempt("unlink", lambda: os.unlink(ro))
attempt("rmdir", lambda: os.rmdir("ro/sub"))
attempt("rename dir", lambda: os.rename("ro/sub", "work/sub"))
attempt("create in dir", lambda: open("ro/new.txt", "x"))  # 33
attempt("mkdir in dir", lambda: os.mkdir("ro/newdir"))
attempt("symlink in dir", lambda: os.symlink("notes.txt", "ro/link"))
attempt("mkfifo in dir", lambda: os.mkfifo("ro/fifo"))
attempt("mknod socket in dir", lambda: os.mknod("ro/sock", stat.S_IFSOCK | 0o644))
attempt("bind socket in dir", lambda: socket.socket(socket.AF_UNIX).bind("ro/sock"))
attempt("O_TMPFILE in dir", lambda: os.open("ro", os.O_TMPFILE | os.O_WRONLY, 0o644))
attempt("mknod device", lambda: os.mknod("work/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
"""

SHELL_WRITES = [  # 34
    "sed -i s/plain/evil/ ro/notes.txt",
    "truncate -s 0 ro/notes.txt",
    "touch ro/notes.txt",
    "touch -d 2001-01-01 ro/notes.txt",
    "chmod 777 ro/notes.txt",
    "echo evil >> ro/notes.txt",
    "echo evil > ro/notes.txt",
    "dd if=/dev/zero of=ro/notes.txt bs=1 count=1 conv=notrunc",
    "cp work/draft.txt ro/notes.txt",
    "cp --reflink=always work/draft.txt ro/notes.txt",
    "install -m 644 work/draft.txt ro/notes.txt",
    "mv ro/notes.txt work/",
    "rm -f ro/notes.txt",
    "fallocate -l 1M ro/notes.txt",
    "mkfifo ro/fifo",
    "ln ro/notes.txt work/hard",
    "ln -s /workspace/work ro/evil",
    "tar xf /dev/null -C ro && touch ro/x",
    "cp -r work/cfg ro/",
]


async def test_read_only_files_cannot_be_altered(fenced: Fenced) -> None:
    out = await fenced.probe(READ_ONLY)
    allowed = {k for k, v in out.items() if v == "OK"}
    assert allowed == set(), allowed
    for label in ("truncate", "chmod", "utime", "touch", "O_WRONLY", "O_TRUNC", "unlink"):
        assert out[label] == "EACCES", label
    assert out["write"] == out["pwrite"] == "EBADF"
    assert out["mknod device"] == "EPERM"
    for command in SHELL_WRITES:
        result = await fenced.sh(command)
        assert result.exit_code != 0, command
    seen = await fenced.sh("cat ro/notes.txt; ls -A ro")
    assert seen.stdout == "plain ro/notes.txt\nnotes.txt\nsub\n"
    await fenced.assert_protected()


# -- the server and the host ----------------------------------------------------------------------


async def test_planted_symlinks_are_never_followed_by_the_server(fenced: Fenced) -> None:
    shadow = anyio.Path("/etc/shadow")
    shadow_before = await shadow.lstat() if await shadow.exists() else None
    planted = await fenced.sh(  # 35
        "ln -s /etc/shadow work/shadow && ln -s /root work/rootdir && ln -s / work/hostroot"
        " && ln -s ../.env work/env-link && ln -s ../secrets work/secrets-link"
        " && ln -s /workspace/.git/config output/git-link; cat work/shadow work/env-link"
    )
    assert planted.stderr.count("No such file or directory") == 2, planted.stderr
    assert (await fenced.sh("ls work/secrets-link/ work/rootdir/")).exit_code != 0

    client, codebase = fenced.sandbox.client, fenced.sandbox.codebase_id
    for link in ["work/shadow", "work/env-link", "output/git-link", "work/secrets-link/token"]:
        with pytest.raises(InvalidConfigurationError):
            await client.download_file(codebase, link)
    for target in ["work/rootdir/planted", "work/hostroot/tmp/planted", "work/secrets-link/x"]:
        with pytest.raises(InvalidConfigurationError, match="not a directory"):
            await client.upload_file(codebase, target, b"planted")
    # Uploading over a link replaces the link, never the file it names.
    await client.upload_file(codebase, "work/env-link", b"replaced")
    assert await client.download_file(codebase, "work/env-link") == b"replaced"
    assert await client.download_file(codebase, ".env") == fenced.before[".env"][1]
    assert not await anyio.Path("/root/planted").exists()
    assert not await anyio.Path("/tmp/planted").exists()
    if shadow_before is not None:
        after = await shadow.lstat()
        assert (after.st_mtime_ns, after.st_size) == (
            shadow_before.st_mtime_ns,
            shadow_before.st_size,
        )
    listing = {f.path for f in await client.list_files(codebase, recursive=True)}
    assert {"work/shadow", "work/rootdir", "work/hostroot", "work/secrets-link"} <= listing
    assert not any(p.startswith(("work/rootdir/", "work/hostroot/")) for p in listing)
    # A later command (a commit) over the links leaves the host as it was.
    await fenced.sh("echo more > work/draft.txt")
    snapshot = await fenced.assert_protected()
    assert snapshot["work/shadow"] == ("link", "/etc/shadow")


SET_ID = r"""
import shutil
shutil.copy("/usr/bin/python3", "work/py")
attempt("chmod u+s", lambda: os.chmod("work/py", 0o4755))
attempt("chmod g+s dir", lambda: os.chmod("work", 0o2775))
attempt("create u+s", lambda: os.close(os.open("work/made", os.O_WRONLY | os.O_CREAT, 0o6755)))
attempt("mkdir g+s", lambda: os.mkdir("work/setgid", 0o2755))
attempt("mknod u+s", lambda: os.mknod("work/node", stat.S_IFREG | 0o4755))
OUT["modes"] = {p: oct(os.stat(p).st_mode & 0o7777) for p in ["work/py", "work", "work/made",
                                                               "work/setgid", "work/node"]}
"""


async def test_no_set_id_bits_reach_the_host(fenced: Fenced, server: ServerProcess) -> None:
    """42: a set-user-ID copy of python3 in a host directory would be a root shell for any
    local user: the bits are dropped, and the deltas are not reachable by other users anyway."""
    out = await fenced.probe(SET_ID)
    modes = out.pop("modes")
    assert set(out.values()) == {"OK"}, out  # allowed, without the set-ID bits
    assert modes == {
        "work/py": "0o755",
        "work": "0o775",
        "work/made": "0o755",
        "work/setgid": "0o755",
        "work/node": "0o755",
    }
    after = await fenced.assert_protected()
    for rel in ["work/py", "work/made", "work/node"]:
        assert after[rel][2] & (stat.S_ISUID | stat.S_ISGID) == 0, rel
    for rel in ["work", "work/setgid"]:
        assert after[rel][1] & (stat.S_ISUID | stat.S_ISGID) == 0, rel
    assert stat.S_IMODE((server.state_dir / "deltas").stat().st_mode) == 0o700


RACE = (
    "(while :; do echo x > work/race.key; echo x > work/.env; echo x >> .env;"
    " mv work/draft.txt work/.env; ln work/draft.txt work/race.pem; mkdir work/secrets;"
    " echo x > work/race.txt; rm -f work/race.txt; done) >/dev/null 2>&1 &"
    " echo $! > /tmp/race.pid"
)


async def test_racing_commits_let_no_hidden_name_in(fenced: Fenced) -> None:
    await fenced.sh(RACE)  # 36
    for _ in range(6):
        listing = await fenced.sh("ls -A work; cat work/.env")
        assert not set(listing.stdout.split()) & {".env", "race.key", "race.pem", "secrets"}
        assert "No such file or directory" in listing.stderr
    await fenced.sh("kill $(cat /tmp/race.pid)")
    after = await fenced.assert_protected()
    assert after["work/draft.txt"] == fenced.before["work/draft.txt"]
    assert not {"work/race.key", "work/race.pem", "work/secrets"} & set(after)


async def test_deletions_stay_and_late_writes_wait_for_a_commit(fenced: Fenced) -> None:
    # 37: a deleted file is gone from the codebase after the command, and stays gone.
    await fenced.sh("rm work/draft.txt output/keep.txt")
    for _ in range(2):
        gone = await fenced.sh("ls -A work output")
        assert not {"draft.txt", "keep.txt"} & set(gone.stdout.split())
        snapshot = await fenced.assert_protected()
        assert not {"work/draft.txt", "output/keep.txt"} & set(snapshot)

    # 38: a background process keeps writing through a descriptor whose name was renamed
    # (and hard-linked) after it was opened. Its writes reach the codebase by commits only,
    # atomically: never in place between two commands.
    started = await fenced.sh(
        "exec 3>work/held; mv work/held work/moved; ln work/moved work/linked;"
        " (for i in $(seq 300); do echo line >&3; sleep 0.01; done) >/dev/null 2>&1 &"
        " echo $! > /tmp/writer.pid; sleep 0.2"
    )
    assert started.exit_code == 0, started.stderr
    first = await _snapshot(fenced.files)
    await anyio.sleep(0.6)
    second = await _snapshot(fenced.files)
    for rel in ("work/moved", "work/linked"):
        assert second[rel] == first[rel], f"{rel} changed in the codebase without a commit"
    await fenced.sh("kill $(cat /tmp/writer.pid); sleep 0.1")
    # (Only the name written through is read: the kernel may cache the other name's size.)
    final = await fenced.sh("wc -l < work/moved")
    lines = int(final.stdout)
    assert lines > len(first["work/moved"][1].splitlines())
    committed = await _snapshot(fenced.files)
    for rel in ("work/moved", "work/linked"):
        assert committed[rel][1] == b"line\n" * lines, rel
    await fenced.assert_protected()


async def test_the_commit_s_temporary_names_cannot_be_taken(endpoint: str, tmp_path: Path) -> None:
    """39: an agent that owns a name like the commit's temporary file breaks no commit."""
    root = tmp_path / "dev"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file.txt").write_text("v1\n")
    async with await AsyncSandbox.from_local(
        root, preset="development", endpoint=endpoint
    ) as sandbox:
        made = await sandbox.run(
            "mkdir .agentfense-commit sub/.agentfense-commit; echo x > .agentfense-commit-1"
        )
        assert made.exit_code == 0, made.stderr
        # Files still open for writing when the command ends are committed by a copy.
        held = await sandbox.run(
            "exec 3>held 4>sub/held; echo one >&3; echo one >&4;"
            " (sleep 0.5; echo two >&3; echo two >&4) >/dev/null 2>&1 &"
        )
        assert held.exit_code == 0, held.stderr
        files = {"held": b"one\n", "sub/held": b"one\n"}
        for rel, content in files.items():
            assert await sandbox.client.download_file(sandbox.codebase_id, rel) == content
        await anyio.sleep(0.7)
        assert (await sandbox.run("cat held sub/held")).stdout == "one\ntwo\none\ntwo\n"
        for rel in files:
            assert await sandbox.client.download_file(sandbox.codebase_id, rel) == b"one\ntwo\n"
        listing = {f.path for f in await sandbox.client.list_files(sandbox.codebase_id, "")}
        assert {".agentfense-commit", ".agentfense-commit-1", "held", "sub"} <= listing


# -- the file API ---------------------------------------------------------------------------------


async def test_the_sandbox_file_api_goes_through_the_view(fenced: Fenced) -> None:
    sandbox = fenced.sandbox  # 40
    for rel in [".env", "secrets/token", "work/.env", "/workspace/.git/config", "/workspace/.env"]:
        with pytest.raises(SandboxError) as missing:
            await sandbox.read_file(rel)
        assert missing.value.code == 5, rel  # NOT_FOUND: as absent as a file that never was
        assert fenced.marker not in str(missing.value)
    for rel in ["work/.env", ".env", "work/new.key", "ro/notes.txt", "ro/new.txt", "secrets/x"]:
        with pytest.raises(SandboxError) as refused:
            await sandbox.write_file(rel, "overwritten")
        assert isinstance(refused.value, PermissionDeniedError) or refused.value.code == 5, rel
    with pytest.raises(PermissionDeniedError):
        await sandbox.write_file("ro/notes.txt", "overwritten")
    # An existing hidden file and an absent one of the same pattern fail alike (17 again).
    for existing, absent in [("work/.env", "work/.env.absent"), ("work/keep/id.key", "x.key")]:
        errors = []
        for rel in (existing, absent):
            for call in (sandbox.read_file, sandbox.list_files):
                with pytest.raises(SandboxError) as failed:
                    await call(rel)
                errors.append((type(failed.value), failed.value.code))
            with pytest.raises(SandboxError) as failed:
                await sandbox.write_file(rel, "x")
            errors.append((type(failed.value), failed.value.code))
        assert errors[:3] == errors[3:], (existing, errors)
    with pytest.raises(InvalidConfigurationError, match=r"\.\."):
        await sandbox.read_file("work/../.env")  # refused before it reaches the sandbox
    with pytest.raises(SandboxError):
        await sandbox.list_files("secrets")
    listed = {f.path.removeprefix("/workspace/") for f in await sandbox.list_files(recursive=True)}
    assert listed == VISIBLE
    await sandbox.write_file("work/new.txt", "fine")
    assert await sandbox.read_file("work/new.txt") == "fine"
    after = await fenced.assert_protected()
    assert after["work/new.txt"][1] == b"fine"
    # The owner's access to the codebase is unfiltered.
    client = sandbox.client
    assert (await client.download_file(sandbox.codebase_id, ".env")).startswith(b"s3cr3t-")

    # 43: a FIFO or a socket where the caller expects a file: an error at once, and no server
    # thread left waiting for a peer the agent controls.
    made = await fenced.sh(
        "mkfifo work/report.txt && python3 -c"
        " 'import socket; socket.socket(socket.AF_UNIX).bind(\"work/report.sock\")'"
    )
    assert made.exit_code == 0, made.stderr
    for rel in ("work/report.txt", "work/report.sock"):
        for write in (False, True):
            pending = sandbox.write_file(rel, "x") if write else sandbox.read_file(rel)
            with anyio.move_on_after(5) as waited, pytest.raises(SandboxError):
                await pending
            if waited.cancel_called:  # release the server's thread before failing
                await fenced.sh(
                    "timeout 1 cat work/report.txt >/dev/null & timeout 1 sh -c"
                    " 'echo x > work/report.txt'; wait"
                )
            assert not waited.cancel_called, (rel, write)


async def test_view_level_files_are_listed_but_unreadable(endpoint: str, tmp_path: Path) -> None:
    """41: ``view`` shows names and sizes, never content (nor a way around it)."""
    root = tmp_path / "viewed"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hidden content')\n")
    async with await AsyncSandbox.from_local(
        root,
        preset="view-only",
        permissions=[PermissionRule("/out/**", Permission.WRITE)],
        endpoint=endpoint,
    ) as sandbox:
        listed = await sandbox.run("ls -l src; stat -c '%s %A' src/main.py")
        assert listed.stdout.split()[-3:] == ["main.py", "24", "----------"], listed.stderr
        denied = await sandbox.exec(
            "python3 -",
            stdin=PRELUDE
            + r"""
p = "src/main.py"
os.mkdir("out")
attempt("open", lambda: os.open(p, os.O_RDONLY))
attempt("exec", lambda: os.execv(p, [p]))
attempt("xattr", lambda: os.listxattr(p))
attempt("link", lambda: os.link(p, "out/copy"))
attempt("rename", lambda: os.rename(p, "out/copy"))
attempt("proc", lambda: open("/proc/self/cwd/" + p).read())
attempt("symlink", lambda: (os.symlink("../" + p, "out/l"), open("out/l").read()))
"""
            + EPILOGUE,
        )
        assert "hidden content" not in denied.stdout + denied.stderr
        out = json.loads(denied.stdout.splitlines()[-1])
        assert set(out.values()) == {"EACCES"}, out
        cat = await sandbox.run("cat src/main.py; cp src/main.py /tmp/x")
        assert cat.stderr.count("Permission denied") == 2


async def test_other_host_users_cannot_reach_a_view(server: ServerProcess, project: Path) -> None:
    """The views' mount allows other users (sandboxes run as their own uid), so the file
    system itself turns away every caller but root and the view's sandbox uid."""
    async with await AsyncSandbox.from_local(
        project, preset="full-access", endpoint=server.endpoint
    ) as sandbox:
        view = server.state_dir / "fs" / "views" / sandbox.id
        script = f"ls {view}; cat {view}/README.md; touch {view}/planted; echo done"
        probe = await anyio.run_process(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script],
            check=False,
        )
        assert probe.stdout == b"done\n"
        assert probe.stderr.count(b"Permission denied") == 3, probe.stderr
        listing = await sandbox.run("ls")
        assert "planted" not in listing.stdout
