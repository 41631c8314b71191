"""The FUSE operations: every request checks the level of each path it touches.

The mount's root holds one directory per view (named by its id, never listed); a sandbox sees
only its own, bound at ``/workspace``. A path whose level is ``none`` does not exist for the
view (ENOENT everywhere, absent from listings) unless something below it is granted, in which
case it is a bare directory that lists only what is granted. ``view`` shows the entry (mode
without permission bits) and refuses its content; ``read`` allows reading; ``write`` allows
every change. The kernel does not check modes (levels are per path: a read-only directory may
hold a writable child), so every check is made here; a file's own owner bits are honoured on
top of its level, as the kernel would for its owner.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from ..types import Permission
from .nodes import Node, Nodes
from .view import LOWER, UPPER, Entry, View, join

P = ParamSpec("P")
R = TypeVar("R")

CACHE_SECONDS = 5.0  # explicit invalidation on commits; this bounds out-of-band changes
_XATTR_PREFIX = "user."


def _fuse_errors(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """OSError from the host becomes the same errno for the caller."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper


_BACKING_FLAGS = os.O_ACCMODE | os.O_TRUNC | os.O_SYNC | os.O_DSYNC | os.O_NOATIME


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _settable(mode: int) -> int:
    """The permission bits a sandbox may give: never set-user-ID or set-group-ID. The host
    files are root's, and the delta a sandbox writes is a host directory: a set-user-ID
    copy of a shell there would be a root shell for whoever reaches it."""
    return stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID)


@dataclass(eq=False)
class Handle:
    fd: int
    node: Node
    writer_path: str | None  # the upper path this handle may write, if any
    writer_ino: int | None = None  # the upper file's inode (it outlives renames of the path)


class PermissionFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self) -> None:
        super().__init__()
        self.views: dict[str, View] = {}
        self.nodes = Nodes()
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, tuple[Node, list[tuple[str, Entry]]]] = {}
        self._next_fh = 1

    # -- bookkeeping ------------------------------------------------------------------------

    def add_view(self, view: View) -> None:
        self.views[view.id] = view
        self.nodes.looked_up(self.nodes.get(view, ""))  # the root lives as long as the view

    def remove_view(self, view_id: str) -> View | None:
        view = self.views.pop(view_id, None)
        if view is not None:
            self.nodes.drop_view(view)
        return view

    @staticmethod
    def _check_caller(view: View, ctx: pyfuse3.RequestContext) -> None:
        """Only root (the server) and the view's own sandbox uid reach a view: the mount is
        shared by every sandbox and allows other users (sandboxes run as their own uid)."""
        if ctx.uid not in (0, view.uid):
            raise _fail(errno.EACCES)

    def _node(self, ino: int, ctx: pyfuse3.RequestContext) -> Node:
        node = self.nodes.by_ino.get(ino)
        if node is None or node.stale or node.view.id not in self.views:
            raise _fail(errno.ENOENT)
        self._check_caller(node.view, ctx)
        return node

    def _fh(self) -> int:
        self._next_fh += 1
        return self._next_fh

    def _entry(self, node: Node) -> Entry:
        entry = node.view.locate(node.rel)
        if entry is None or not node.view.visible(node.rel, entry.is_dir):
            raise _fail(errno.ENOENT)
        return entry

    @staticmethod
    def _need(view: View, rel: str, level: Permission) -> None:
        if view.level(rel).rank < level.rank:
            raise _fail(errno.EACCES)

    def _attrs(self, node: Node, entry: Entry) -> pyfuse3.EntryAttributes:
        view, st = node.view, entry.st
        mode = st.st_mode
        perm = stat.S_IMODE(mode)
        level = view.level(node.rel)
        if stat.S_ISDIR(mode):
            if level is Permission.WRITE:
                shown = perm
            elif level is Permission.READ:
                shown = (perm & 0o555) | 0o500
            else:  # view, or a bare passage to something granted below
                shown = 0o555
        elif stat.S_ISLNK(mode):
            shown = 0o777
        elif level is Permission.WRITE:
            shown = perm
        elif level is Permission.READ:
            shown = (perm & 0o555) | 0o400
        else:
            shown = 0
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.ino
        attrs.st_mode = stat.S_IFMT(mode) | shown
        # A directory's host link count counts its hidden subdirectories too: show 1, which
        # tools read as "unknown" (as on btrfs).
        attrs.st_nlink = 1 if stat.S_ISDIR(mode) else st.st_nlink
        attrs.st_uid = view.uid
        attrs.st_gid = view.gid
        attrs.st_rdev = 0
        attrs.st_size = st.st_size
        attrs.st_blksize = 4096
        attrs.st_blocks = st.st_blocks
        attrs.st_atime_ns = st.st_atime_ns
        attrs.st_mtime_ns = st.st_mtime_ns
        attrs.st_ctime_ns = st.st_ctime_ns
        attrs.entry_timeout = CACHE_SECONDS
        attrs.attr_timeout = CACHE_SECONDS
        return attrs

    @staticmethod
    def _mount_root_attrs() -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = pyfuse3.ROOT_INODE
        attrs.st_mode = stat.S_IFDIR | 0o711
        attrs.st_nlink = 2
        attrs.entry_timeout = attrs.attr_timeout = CACHE_SECONDS
        return attrs

    def _child(
        self, parent_ino: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> tuple[View, str, Node | None]:
        """The view and path of ``name`` in ``parent_ino`` (the node when it is the view root)."""
        text = os.fsdecode(name)
        if parent_ino == pyfuse3.ROOT_INODE:
            view = self.views.get(text)
            if view is None:
                raise _fail(errno.ENOENT)
            self._check_caller(view, ctx)
            return view, "", self.nodes.get(view, "")
        parent = self._node(parent_ino, ctx)
        entry = self._entry(parent)
        if not entry.is_dir:
            raise _fail(errno.ENOTDIR)
        return parent.view, join(parent.rel, text), None

    def _made(self, view: View, rel: str) -> pyfuse3.EntryAttributes:
        """A new entry stands at ``rel`` in the upper tree: record it, return its attributes."""
        view.created(rel)
        return self._found(view, rel, Entry(UPPER, view.upper.lstat(rel)))

    def _found(self, view: View, rel: str, entry: Entry) -> pyfuse3.EntryAttributes:
        node = self.nodes.get(view, rel)
        self.nodes.looked_up(node)
        return self._attrs(node, entry)

    # -- lookup and attributes -------------------------------------------------------------

    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        view, rel, _ = self._child(parent_inode, name, ctx)
        entry = view.locate(rel)
        if entry is None or not view.visible(rel, entry.is_dir):
            raise _fail(errno.ENOENT)
        return self._found(view, rel, entry)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == pyfuse3.ROOT_INODE:
            return self._mount_root_attrs()
        held = self._removed_but_open(inode, ctx)
        if held is not None:
            return held
        node = self._node(inode, ctx)
        return self._attrs(node, self._entry(node))

    def _removed_but_open(
        self, inode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes | None:
        """A file removed from its path keeps its attributes while a process holds it open
        (the kernel asks for them to read an unlinked temporary file back)."""
        node = self.nodes.by_ino.get(inode)
        if node is None or not node.stale or node.view.id not in self.views:
            return None
        for handle in self._handles.values():
            if handle.node is node:
                self._check_caller(node.view, ctx)
                return self._attrs(node, Entry(UPPER, os.fstat(handle.fd)))
        return None

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.nodes.forget(inode, count)

    @_fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode, ctx)
        view, rel = node.view, node.rel
        self._entry(node)
        self._need(view, rel, Permission.WRITE)
        if (fields.update_uid and attr.st_uid != view.uid) or (
            fields.update_gid and attr.st_gid != view.gid
        ):
            raise _fail(errno.EPERM)
        entry = view.copy_up(rel)
        if fields.update_mode:
            if stat.S_ISLNK(entry.st.st_mode):
                raise _fail(errno.EOPNOTSUPP)
            view.upper.chmod(rel, _settable(attr.st_mode))
        if fields.update_size:
            view.charge(attr.st_size - entry.st.st_size)
            handle = self._handles.get(fh) if fh else None
            if handle is not None and handle.writer_path == rel:
                os.ftruncate(handle.fd, attr.st_size)
            else:
                fd = view.upper.open(rel, os.O_WRONLY)
                try:
                    os.ftruncate(fd, attr.st_size)
                finally:
                    os.close(fd)
        if fields.update_atime or fields.update_mtime:
            current = view.upper.lstat(rel)
            atime = attr.st_atime_ns if fields.update_atime else current.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else current.st_mtime_ns
            view.upper.utime(rel, (atime, mtime))
        return self._attrs(node, self._entry(node))

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode, ctx)
        entry = self._entry(node)
        if not stat.S_ISLNK(entry.st.st_mode):
            raise _fail(errno.EINVAL)
        self._need(node.view, node.rel, Permission.READ)
        return os.fsencode(node.view.readlink(node.rel, entry))

    @_fuse_errors
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        if inode == pyfuse3.ROOT_INODE:
            return not mode & (os.R_OK | os.W_OK)
        node = self._node(inode, ctx)
        entry = self._entry(node)
        level = node.view.level(node.rel)
        if mode & os.W_OK and level is not Permission.WRITE:
            return False
        if mode & (os.R_OK | os.X_OK) and not entry.is_dir:
            return level.rank >= Permission.READ.rank
        return True

    # -- directories ------------------------------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        fh = self._fh()
        if inode == pyfuse3.ROOT_INODE:
            raise _fail(errno.EACCES)  # the mount's root lists no view
        node = self._node(inode, ctx)
        entry = self._entry(node)
        if not entry.is_dir:
            raise _fail(errno.ENOTDIR)
        self._dirs[fh] = (node, node.view.entries(node.rel))
        return fh

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node, entries = self._dirs[fh]
        view = node.view
        for index in range(start_id, len(entries)):
            name, entry = entries[index]
            rel = join(node.rel, name)
            if not view.visible(rel, entry.is_dir):
                continue
            child = self.nodes.get(view, rel)
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), self._attrs(child, entry), index + 1
            ):
                return
            self.nodes.looked_up(child)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        view, rel = self._new_entry(parent_inode, name, ctx)
        view.upper.mkdir(rel, _settable(mode) & ~ctx.umask)
        return self._made(view, rel)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        view, rel, _ = self._child(parent_inode, name, ctx)
        entry = self._existing(view, rel)
        self._need(view, rel, Permission.WRITE)
        if not entry.is_dir:
            raise _fail(errno.ENOTDIR)
        if self._visible_children(view, rel):
            raise _fail(errno.ENOTEMPTY)
        view.remove(rel, entry)
        self.nodes.removed(view, rel)

    def _visible_children(self, view: View, rel: str) -> list[str]:
        children = ((join(rel, name), entry) for name, entry in view.entries(rel))
        return [child for child, entry in children if view.visible(child, entry.is_dir)]

    # -- creating and removing --------------------------------------------------------------

    def _existing(self, view: View, rel: str) -> Entry:
        entry = view.locate(rel)
        if entry is None or not view.visible(rel, entry.is_dir):
            raise _fail(errno.ENOENT)
        return entry

    def _new_entry(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> tuple[View, str]:
        """Check that ``name`` may be created in the directory, and make room for it."""
        view, rel, _ = self._child(parent_inode, name, ctx)
        self._need(view, rel, Permission.WRITE)
        if view.locate(rel) is not None:
            raise _fail(errno.EEXIST)
        view.prepare_new(rel)
        return view, rel

    @_fuse_errors
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        view, rel = self._new_entry(parent_inode, name, ctx)
        flags = (flags & _BACKING_FLAGS) | os.O_CREAT | os.O_EXCL
        fd = view.upper.open(rel, flags, _settable(mode) & ~ctx.umask)
        view.created(rel)
        attrs = self._found(view, rel, Entry(UPPER, os.fstat(fd)))
        node = self.nodes.get(view, rel)
        return pyfuse3.FileInfo(fh=self._register(fd, node, rel)), attrs

    @_fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)):
            raise _fail(errno.EPERM)  # no device nodes
        view, rel = self._new_entry(parent_inode, name, ctx)
        with view.upper.parent(rel) as (fd, leaf):
            os.mknod(leaf, stat.S_IFMT(mode) | (_settable(mode) & ~ctx.umask), dir_fd=fd)
        return self._made(view, rel)

    @_fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        view, rel = self._new_entry(parent_inode, name, ctx)
        view.upper.symlink(os.fsdecode(target), rel)
        return self._made(view, rel)

    @_fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode, ctx)
        entry = self._entry(node)
        if entry.is_dir:
            raise _fail(errno.EPERM)
        # Both names reach one content: the source must be writable as well.
        self._need(node.view, node.rel, Permission.WRITE)
        view, rel = self._new_entry(new_parent_inode, new_name, ctx)
        if view is not node.view:
            raise _fail(errno.EXDEV)
        view.copy_up(node.rel)
        view.upper.link(node.rel, rel)
        return self._made(view, rel)

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        view, rel, _ = self._child(parent_inode, name, ctx)
        entry = self._existing(view, rel)
        self._need(view, rel, Permission.WRITE)
        if entry.is_dir:
            raise _fail(errno.EISDIR)
        view.remove(rel, entry)
        self.nodes.removed(view, rel)

    @_fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        view, old, _ = self._child(parent_inode_old, name_old, ctx)
        new_view, new, _ = self._child(parent_inode_new, name_new, ctx)
        if new_view is not view or not old or not new:
            raise _fail(errno.EXDEV)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fail(errno.EINVAL)
        entry = self._existing(view, old)
        self._need(view, old, Permission.WRITE)
        self._need(view, new, Permission.WRITE)
        if entry.is_dir:
            self._check_moved_tree(view, old, new)
        target = view.locate(new)
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise _fail(errno.EEXIST)
            if target.is_dir and not entry.is_dir:
                raise _fail(errno.EISDIR)
            if entry.is_dir and not target.is_dir:
                raise _fail(errno.ENOTDIR)
            if target.is_dir and self._visible_children(view, new):
                raise _fail(errno.ENOTEMPTY)
            view.remove(new, target)
        view.rename(old, new)
        self.nodes.rename(view, old, new)

    def _check_moved_tree(self, view: View, old: str, new: str) -> None:
        """Everything visible below a moved directory leaves ``old`` and lands under ``new``."""
        for child in self._visible_children(view, old):
            moved = new + child[len(old) :]
            self._need(view, child, Permission.WRITE)
            self._need(view, moved, Permission.WRITE)
            entry = view.locate(child)
            if entry is not None and entry.is_dir:
                self._check_moved_tree(view, child, moved)

    # -- files ------------------------------------------------------------------------------

    def _register(self, fd: int, node: Node, writer_path: str | None) -> int:
        fh = self._fh()
        handle = self._handles[fh] = Handle(fd, node, writer_path)
        if writer_path is not None:
            # Counted per inode, not per path: a rename or a hard link of the file must not
            # let the commit move the inode this descriptor writes into the codebase.
            handle.writer_ino = os.fstat(fd).st_ino
            writers = node.view.writers
            writers[handle.writer_ino] = writers.get(handle.writer_ino, 0) + 1
        return fh

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode, ctx)
        view, rel = node.view, node.rel
        entry = self._entry(node)
        if entry.is_dir:
            raise _fail(errno.EISDIR)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        reading = (flags & os.O_ACCMODE) != os.O_WRONLY
        self._need(view, rel, Permission.WRITE if writing else Permission.READ)
        owner = entry.st.st_mode
        if (writing and not owner & stat.S_IWUSR) or (reading and not owner & stat.S_IRUSR):
            raise _fail(errno.EACCES)
        # Only what the backing file needs: the kernel also passes its own bits (exec's
        # __FMODE_EXEC), which openat2 refuses with EINVAL.
        backing = flags & _BACKING_FLAGS
        if writing:
            view.copy_up(rel)
            fd = view.upper.open(rel, backing)
            return pyfuse3.FileInfo(fh=self._register(fd, node, rel))
        fd = view.open(rel, entry, backing)
        return pyfuse3.FileInfo(fh=self._register(fd, node, None), keep_cache=entry.layer == LOWER)

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self._handles[fh].fd, size, off)

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        if handle.writer_path is None:
            raise _fail(errno.EBADF)
        handle.node.view.charge(off + len(buf) - os.fstat(handle.fd).st_size)
        return os.pwrite(handle.fd, buf, off)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        fd = self._handles[fh].fd
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        os.close(handle.fd)
        if handle.writer_ino is not None:
            writers = handle.node.view.writers
            remaining = writers.get(handle.writer_ino, 1) - 1
            if remaining > 0:
                writers[handle.writer_ino] = remaining
            else:
                writers.pop(handle.writer_ino, None)

    # -- extended attributes (the user namespace only) --------------------------------------

    def _xattr_fd(self, node: Node, *, write: bool) -> int:
        view, rel = node.view, node.rel
        entry = self._entry(node)
        if not (entry.is_dir or stat.S_ISREG(entry.st.st_mode)):
            raise _fail(errno.EOPNOTSUPP)
        self._need(view, rel, Permission.WRITE if write else Permission.READ)
        if write:
            entry = view.copy_up(rel)
        flags = os.O_RDONLY | (os.O_DIRECTORY if entry.is_dir else 0)
        return view.tree(entry.layer).open(rel, flags)

    @staticmethod
    def _xattr_name(name: bytes) -> str:
        text = os.fsdecode(name)
        if not text.startswith(_XATTR_PREFIX):
            raise _fail(errno.EOPNOTSUPP)
        return text

    @_fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        key = self._xattr_name(name)
        fd = self._xattr_fd(self._node(inode, ctx), write=False)
        try:
            return os.getxattr(fd, key)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise _fail(pyfuse3.ENOATTR) from None
            raise
        finally:
            os.close(fd)

    @_fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        fd = self._xattr_fd(self._node(inode, ctx), write=False)
        try:
            return [os.fsencode(n) for n in os.listxattr(fd) if n.startswith(_XATTR_PREFIX)]
        finally:
            os.close(fd)

    @_fuse_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        key = self._xattr_name(name)
        fd = self._xattr_fd(self._node(inode, ctx), write=True)
        try:
            os.setxattr(fd, key, value)
        finally:
            os.close(fd)

    @_fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        key = self._xattr_name(name)
        fd = self._xattr_fd(self._node(inode, ctx), write=True)
        try:
            os.removexattr(fd, key)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise _fail(pyfuse3.ENOATTR) from None
            raise
        finally:
            os.close(fd)

    # -- the file system --------------------------------------------------------------------

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        views = list(self.views.values())
        st = os.statvfs(views[0].upper.fd if views else "/")
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail"):
            setattr(data, name, getattr(st, name))
        data.f_files, data.f_ffree, data.f_favail = st.f_files, st.f_ffree, st.f_favail
        data.f_namemax = st.f_namemax
        return data


__all__ = ["PermissionFS"]
