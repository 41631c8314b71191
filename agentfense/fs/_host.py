"""Host directory trees accessed without ever following a symlink.

Every path is resolved with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` from the tree's
root directory fd, so neither ``..`` nor a symlink planted by a sandbox (or committed into a
codebase) can lead an operation outside the tree; the last component is handled with the
``*at`` calls that do not follow it either.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_openat2_call = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    use_errno=True,
)(("syscall", _libc))


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


# One open_how per (flags, mode), made once and never changed: shared by every thread.
_hows: dict[tuple[int, int], tuple[_OpenHow, int]] = {}


def _how(flags: int, mode: int) -> int:
    key = (flags, mode)
    found = _hows.get(key)
    if found is None:
        how = _OpenHow(
            flags, mode, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
        )
        found = _hows.setdefault(key, (how, ctypes.addressof(how)))
    return found[1]


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """Open ``path`` beneath ``dir_fd``, following no symlink on the way (nor at the end)."""
    # (O_TMPFILE includes O_DIRECTORY's bit: test for all of it.)
    creating = flags & os.O_CREAT or (flags & os.O_TMPFILE) == os.O_TMPFILE
    how = _how(flags | os.O_CLOEXEC, mode if creating else 0)
    raw = os.fsencode(path)
    while True:
        fd = _openat2_call(_SYS_OPENAT2, dir_fd, raw, how, 24)
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err), path)


def split(rel: str) -> tuple[str, str]:
    """``("a/b", "c")`` for ``"a/b/c"``; ``("", "c")`` for ``"c"``."""
    parent, _, name = rel.rpartition("/")
    return parent, name


class HostTree:
    """A directory tree on the host, addressed by relative paths ("" is the root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    @contextlib.contextmanager
    def parent(self, rel: str) -> Iterator[tuple[int, str]]:
        """The fd of ``rel``'s parent directory and ``rel``'s last component."""
        parent, name = split(rel)
        if not name:
            raise OSError(errno.EINVAL, "the root has no parent", rel)
        if not parent:
            yield self.fd, name
            return
        fd = openat2(self.fd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def lstat(self, rel: str) -> os.stat_result:
        if not rel:
            return os.stat(self.fd)
        # O_PATH with O_NOFOLLOW opens a symlink itself: its own attributes, never its target's.
        fd = openat2(self.fd, rel, os.O_PATH | os.O_NOFOLLOW)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def try_lstat(self, rel: str) -> os.stat_result | None:
        """``None`` when ``rel`` is not there (a symlink on the way counts as not there)."""
        try:
            return self.lstat(rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None
            raise

    def open(self, rel: str, flags: int, mode: int = 0o644) -> int:
        """An fd on a regular file or directory (never through or onto a symlink)."""
        if not rel:
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=self.fd)
        return openat2(self.fd, rel, flags | os.O_NOFOLLOW, mode)

    def listdir(self, rel: str) -> list[str]:
        fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def scan(self, rel: str) -> list[tuple[str, os.stat_result]]:
        """A directory's entries with their lstat, through one directory fd ([] if absent)."""
        try:
            fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink where a directory was: nothing below
                return []
            raise
        found = []
        try:
            for name in os.listdir(fd):
                with contextlib.suppress(FileNotFoundError):
                    found.append((name, os.stat(name, dir_fd=fd, follow_symlinks=False)))
        finally:
            os.close(fd)
        return found

    def readlink(self, rel: str) -> str:
        with self.parent(rel) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def mkdir(self, rel: str, mode: int) -> None:
        with self.parent(rel) as (fd, name):
            os.mkdir(name, mode, dir_fd=fd)

    def makedirs(self, rel: str, mode_of: Callable[[str], int] | None = None) -> None:
        """Create ``rel`` and its missing parents (modes from ``mode_of(path)``, else 0o755)."""
        if not rel:
            return
        done = ""
        for part in rel.split("/"):
            done = f"{done}/{part}" if done else part
            st = self.try_lstat(done)
            if st is None:
                self.mkdir(done, mode_of(done) if mode_of else 0o755)
            elif not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), done)

    def symlink(self, target: str, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.symlink(target, name, dir_fd=fd)

    def unlink(self, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.unlink(name, dir_fd=fd)

    def rmdir(self, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.rmdir(name, dir_fd=fd)

    def rename(self, old: str, new: str, other: HostTree | None = None) -> None:
        """Rename ``old`` of this tree to ``new`` of ``other`` (this tree by default)."""
        target = other or self
        with self.parent(old) as (old_fd, old_name), target.parent(new) as (new_fd, new_name):
            os.rename(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd)

    def link(self, old: str, new: str) -> None:
        with self.parent(old) as (old_fd, old_name), self.parent(new) as (new_fd, new_name):
            os.link(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False)

    def chmod(self, rel: str, mode: int) -> None:
        """Change a file's or directory's mode (never a symlink's target's)."""
        if not rel:
            os.chmod(f"/proc/self/fd/{self.fd}", mode)
            return
        with self.parent(rel) as (fd, name):
            if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise OSError(errno.EOPNOTSUPP, "symlinks have no mode of their own", rel)
            os.chmod(name, mode, dir_fd=fd)

    def utime(self, rel: str, ns: tuple[int, int]) -> None:
        with self.parent(rel) as (fd, name):
            os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)


def _copy_xattrs(fd_in: int, fd_out: int) -> None:
    """The file's extended attributes of the user namespace (the only ones a sandbox sets):
    a copy made before a change (copy-on-write, a checkpoint's file made the view's own)
    must not lose what the sandbox set."""
    try:
        names = os.listxattr(fd_in)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        if name.startswith("user."):
            os.setxattr(fd_out, name, os.getxattr(fd_in, name))


def copy_file(src: HostTree, src_rel: str, dst: HostTree, dst_rel: str) -> None:
    """Copy a regular file's content (its holes kept), mode and times (the destination is
    replaced)."""
    st = src.lstat(src_rel)
    fd_in = src.open(src_rel, os.O_RDONLY)
    try:
        fd_out = dst.open(dst_rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IMODE(st.st_mode))
        try:
            _copy_data(fd_in, fd_out, st.st_size)
            _copy_xattrs(fd_in, fd_out)
            os.fchmod(fd_out, stat.S_IMODE(st.st_mode))
            os.utime(fd_out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def link_into(src: HostTree, src_rel: str, dst: HostTree, dst_rel: str) -> bool:
    """A new name ``dst_rel`` of ``dst`` for the regular file ``src_rel`` of ``src`` (one
    filesystem); False when there is no such file, or it has the most names its disk allows."""
    st = src.try_lstat(src_rel)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    with src.parent(src_rel) as (src_fd, src_name), dst.parent(dst_rel) as (dst_fd, dst_name):
        try:
            os.link(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd,
                    follow_symlinks=False)  # fmt: skip
        except OSError as exc:
            if exc.errno in (errno.EMLINK, errno.ENOENT):
                return False
            raise
    return True


def _copy_data(fd_in: int, fd_out: int, size: int) -> None:
    """The first ``size`` bytes of ``fd_in`` into the empty ``fd_out``, extent by extent: a
    hole stays a hole (a sparse file of 3 GiB that holds nothing costs nothing, copied)."""
    os.ftruncate(fd_out, size)
    at = 0
    while at < size:
        try:
            data = os.lseek(fd_in, at, os.SEEK_DATA)
            end = min(os.lseek(fd_in, data, os.SEEK_HOLE), size)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from here
                return
            if exc.errno != errno.EINVAL:  # (a filesystem that cannot say: all data)
                raise
            data, end = at, size
        while data < end:
            copied = os.copy_file_range(fd_in, fd_out, end - data, data, data)
            if copied == 0:  # (the file shrank meanwhile)
                return
            data += copied
        at = end


_SYS_GETDENTS64 = 217
_getdents_call = ctypes.CFUNCTYPE(
    ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, use_errno=True
)(("syscall", _libc))
_DIRENT64 = struct.Struct("<QqHB")  # d_ino d_off d_reclen d_type, then the name
_DIRENTS_BUFFER = 8192


def dir_entries(fd: int, cookie: int) -> Iterator[tuple[str, int, int]]:
    """``(name, d_type, cookie after it)`` of the directory ``fd``, from ``cookie`` (0: the
    start; else one this function gave), ``.`` and ``..`` included. Nothing is kept between
    calls: a listing resumes from its cookie, whatever the directory's size."""
    os.lseek(fd, cookie, os.SEEK_SET)
    buffer = ctypes.create_string_buffer(_DIRENTS_BUFFER)
    raw = memoryview(buffer).cast("B")
    while True:
        size = _getdents_call(_SYS_GETDENTS64, fd, buffer, len(buffer))
        if size < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            raise OSError(err, os.strerror(err))
        if size == 0:
            return
        at = 0
        while at < size:
            _, next_cookie, length, d_type = _DIRENT64.unpack_from(raw, at)
            name_bytes = bytes(raw[at + _DIRENT64.size : at + length]).split(b"\0", 1)[0]
            at += length
            yield os.fsdecode(name_bytes), d_type, next_cookie


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it, whatever the depth a sandbox made there:
    iteratively, one directory open at a time, following no symlink. What cannot be removed
    stays (like ``shutil.rmtree(ignore_errors=True)``, which recurses once per level)."""
    try:
        tree = HostTree(path)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()  # not a directory (or already gone)
        return
    try:
        stack: list[tuple[str, bool]] = [(name, False) for name in _names(tree, "")]
        while stack:
            rel, expanded = stack.pop()
            try:
                st = tree.lstat(rel)
                if not stat.S_ISDIR(st.st_mode):
                    tree.unlink(rel)
                elif expanded:
                    tree.rmdir(rel)
                else:
                    stack.append((rel, True))
                    stack.extend((f"{rel}/{name}", False) for name in _names(tree, rel))
            except OSError:
                continue
    finally:
        tree.close()
    with contextlib.suppress(OSError):
        path.rmdir()


def _names(tree: HostTree, rel: str) -> list[str]:
    try:
        return tree.listdir(rel)
    except OSError:
        return []
