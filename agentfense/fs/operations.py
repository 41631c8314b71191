"""The FUSE requests of one view: every request checks the level of each path it touches.

The kernel opens files without asking (OPEN and OPENDIR are answered ENOSYS once, and never
sent again on the connection): it checks each open against the mode bits we report, which
express the level (:mod:`._attrs`). CREATE is answered ENOSYS too: the kernel then makes a
new file with MKNOD and opens it without asking, where CREATE would cost a RELEASE at close.
Reads and writes then come with the node id alone, and are checked here again, as is
everything that creates, removes or renames a name, changes attributes or extended
attributes. A path whose level is ``none`` does not exist for the
view (ENOENT everywhere, absent from listings) unless something below it is granted, in
which case it is a bare directory that lists only what is granted. ``view`` shows the entry
and refuses its content; ``read`` allows reading; ``write`` allows every change.

Nothing here may raise anything but ``OSError`` on bad input: the connection answers it
with its errno (anything else becomes EIO and is logged, and serving goes on).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from ..policy import MatchState
from ..types import Permission
from . import _abi as abi
from ._attrs import attributes
from ._host import copy_file
from .nodes import Node
from .view import LOWER, MAX_PATH, UPPER, Entry, View, fail, join

# Entries and attributes stay cached in the kernel this long; every change made outside the
# kernel's sight (another sandbox's commit, an upload) is invalidated explicitly.
CACHE_SECONDS = 3600
_XATTR_PREFIX = b"user."
_CURSORS = 1024  # where listings stopped, remembered per view
_NO_ENTRY = abi.Reply.entry(0, abi.ATTR.pack(*([0] * 16)), 0)  # a dirent without attributes
_MAX_XATTR_VALUE = 64 * 1024
# Requests any process that reached a file may make (the kernel checked its open), and
# those that carry no caller at all.
_ANY_CALLER = frozenset(
    {abi.FORGET, abi.BATCH_FORGET, abi.INTERRUPT, abi.READ, abi.WRITE, abi.FSYNC,
     abi.RELEASE, abi.RELEASEDIR, abi.FLUSH, abi.STATFS, abi.DESTROY}
)  # fmt: skip

Handler = Callable[[Node, memoryview], bytes]


def _settable(mode: int) -> int:
    """The permission bits a sandbox may give: never set-user-ID or set-group-ID. The host
    files are root's, and the delta a sandbox writes is a host directory: a set-user-ID
    copy of a shell there would be a root shell for whoever reaches it."""
    return stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID)


def _name(raw: memoryview | bytes) -> str:
    """A NUL-terminated name from a request."""
    data = bytes(raw)
    end = data.find(b"\0")
    name = os.fsdecode(data if end < 0 else data[:end])
    if not name or name in (".", "..") or "/" in name:
        raise fail(errno.EINVAL)
    return name


def _two_names(raw: memoryview) -> tuple[str, bytes]:
    data = bytes(raw)
    first, _, rest = data.partition(b"\0")
    return _name(first), rest.partition(b"\0")[0]


# The method answering each opcode.
_HANDLERS: dict[int, str] = {
    abi.LOOKUP: "lookup",
    abi.GETATTR: "getattr",
    abi.SETATTR: "setattr",
    abi.READLINK: "readlink",
    abi.SYMLINK: "symlink",
    abi.MKNOD: "mknod",
    abi.MKDIR: "mkdir",
    abi.UNLINK: "unlink",
    abi.RMDIR: "rmdir",
    abi.RENAME: "rename",
    abi.RENAME2: "rename2",
    abi.LINK: "link",
    abi.READ: "read",
    abi.WRITE: "write",
    abi.STATFS: "statfs",
    abi.RELEASE: "nothing",
    abi.RELEASEDIR: "nothing",
    abi.FSYNC: "fsync",
    abi.FSYNCDIR: "nothing",
    abi.SETXATTR: "setxattr",
    abi.GETXATTR: "getxattr",
    abi.LISTXATTR: "listxattr",
    abi.REMOVEXATTR: "removexattr",
    abi.FALLOCATE: "fallocate",
    abi.READDIRPLUS: "readdirplus",
    abi.READDIR: "readdir",
    abi.DESTROY: "nothing",
}


class Operations:
    """Answers one view's requests; one thread at a time."""

    def __init__(self, view: View, notify: Callable[[list[bytes]], object]) -> None:
        self.view = view
        self.nodes = view.nodes
        # Notifications for this view's own kernel: written later, by another thread.
        self._notify = notify
        # Files of the upper tree with several names (hard links): host inode -> the nodes
        # of its names, whose cached pages a write through one of them makes stale.
        self._linked: dict[int, set[int]] = {}
        self._cursors: OrderedDict[tuple[int, int], int] = OrderedDict()
        self.resent = False  # the request being answered was sent before, to a dead process
        self.op = ""  # the request being answered, by its op's name (for refusals' events)

    def handler(self, opcode: int) -> Handler | None:
        # Bound per request: a table of bound methods kept on the object would be a cycle,
        # and the view would wait for a full garbage collection once it is closed.
        name = _HANDLERS.get(opcode)
        return None if name is None else getattr(self, name)

    def node(self, opcode: int, nodeid: int, uid: int) -> Node:
        node = self.nodes.by_id.get(nodeid)
        if node is None:
            raise fail(errno.ESTALE)
        if opcode not in _ANY_CALLER and uid not in (0, self.view.uid):
            # The mount is reachable by path from the host: only the sandbox and root.
            raise fail(errno.EACCES)
        return node

    # -- shared checks ------------------------------------------------------------------------

    def _entry(self, node: Node) -> Entry:
        """The live entry of a node (ENOENT when its path no longer shows it)."""
        if node.stale:
            raise fail(errno.ENOENT)
        return self._existing(node)

    def _need(self, node: Node, level: Permission) -> None:
        if node.level.rank < level.rank:
            raise self._refused(node.rel)

    def _refused(self, rel: str, code: int = errno.EACCES) -> OSError:
        """A request refused for the policy at ``rel``: recorded for the sandbox's watchers
        (with the rule that decided), and its error."""
        events = self.view.events
        if events.active:
            events.record("denied", rel, operation=self.op, rule=self.view.policy.describe(rel))
        return fail(code)

    def _child(self, parent: Node, name: str) -> Node:
        """The node of ``name`` in the directory ``parent``: the kernel's, or a stand-in the
        table does not hold (id 0) when the kernel knows of none."""
        rel = join(parent.rel, name)
        node = self.nodes.by_path.get(rel)
        if node is None:
            state = self.nodes.child_state(parent, name)
            node = Node(0, rel, state, self.view.policy.level_of(state), None)
        return node

    def _existing(self, node: Node) -> Entry:
        entry = self.view.locate(node.rel)
        if entry is None or not (
            not node.rel or self.view.visible_state(node.state, node.level, entry.is_dir)
        ):
            raise fail(errno.ENOENT)
        return entry

    def _reply_entry(self, node: Node, entry: Entry) -> bytes:
        self.nodes.looked_up(node)
        self._note_links(node, entry)
        return abi.Reply.entry(node.id, attributes(self.view, node, entry), CACHE_SECONDS)

    def _note_links(self, node: Node, entry: Entry) -> None:
        st = entry.st
        if entry.layer == UPPER and st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
            self._linked.setdefault(st.st_ino, set()).add(node.id)

    def _wrote(self, node: Node, fd: int) -> None:
        """After a change of content through ``node``: its other names drop their pages."""
        if not node.stale:
            self.view.events.record("modified", node.rel)
        st = os.fstat(fd)
        if st.st_nlink > 1:
            others = self._linked.get(st.st_ino, set()) - {node.id}
            if others:
                self._notify([abi.notify_inval_inode(other) for other in sorted(others)])

    def _new_entry(self, parent: Node, name: str) -> Node | bytes:
        """Check that ``name`` may be made in ``parent`` and make room for it: a stand-in of
        its node (the table gets one once the entry is made: :meth:`_made`); or, for a
        request sent again whose first answer was lost, the reply it had."""
        self._entry(parent)
        rel = join(parent.rel, name)
        state = self.nodes.child_state(parent, name)
        if self.view.policy.level_of(state) is not Permission.WRITE:
            raise self._refused(rel)
        existing = self.view.locate(rel)
        if existing is not None:
            if self.resent and existing.layer == UPPER:
                return self._reply_entry(self.nodes.get(parent, name, state), existing)
            raise fail(errno.EEXIST)
        self.view.prepare_new(rel)
        return Node(0, rel, state, self.view.policy.level_of(state), None)

    def _made(self, parent: Node, new: Node) -> bytes:
        """The entry ``new`` stands for is made: its node, and the reply."""
        self.view.created(new.rel)
        self.view.events.record("created", new.rel)
        node = self.nodes.get(parent, new.name, new.state)
        return self._reply_entry(node, Entry(UPPER, self.view.upper.lstat(new.rel)))

    # -- lookup and attributes ----------------------------------------------------------------

    def lookup(self, parent: Node, body: memoryview) -> bytes:
        name = _name(body)
        rel = join(parent.rel, name)
        if parent.stale or len(os.fsencode(rel)) > 4096:
            raise fail(errno.ENOENT)
        node = self.nodes.by_path.get(rel)
        state = node.state if node is not None else self.nodes.child_state(parent, name)
        level = node.level if node is not None else self.view.policy.level_of(state)
        entry = self.view.locate(rel)
        if entry is None or not self.view.visible_state(state, level, entry.is_dir):
            if entry is not None:  # hidden: its watchers hear of it (the sandbox, of nothing)
                self._refused(rel, errno.ENOENT)
            return abi.Reply.entry(0, abi.ATTR.pack(*([0] * 16)), CACHE_SECONDS)  # cached ENOENT
        return self._reply_entry(node or self.nodes.get(parent, name, state), entry)

    def _orphan_entry(self, node: Node) -> Entry:
        if not node.orphan:
            raise fail(errno.ENOENT)
        return Entry(UPPER, self.view.orphans.lstat(node.orphan))

    def getattr(self, node: Node, body: memoryview) -> bytes:
        entry = self._orphan_entry(node) if node.stale else self._entry(node)
        return abi.Reply.attr_out(attributes(self.view, node, entry), CACHE_SECONDS)

    def _private_orphan(self, node: Node) -> Entry:
        """The orphan of a stale node, made its own before any change: one linked to a
        codebase file (or to another name) is copied first."""
        view = self.view
        entry = self._orphan_entry(node)
        if entry.st.st_nlink > 1:
            view.charge(entry.st.st_size)
            private = f"{node.orphan}.copy"
            copy_file(view.orphans, node.orphan, view.orphans, private)
            view.orphans.rename(private, node.orphan)
            entry = Entry(UPPER, view.orphans.lstat(node.orphan))
        return entry

    def _writable_file(self, node: Node) -> tuple[int, Entry]:
        """An fd open for writing on the node's own file (copied up, or its orphan)."""
        view = self.view
        if node.stale:
            entry = self._private_orphan(node)
            return view.orphans.open(node.orphan, os.O_WRONLY), entry
        self._entry(node)
        self._need(node, Permission.WRITE)
        entry = view.copy_up(node.rel)
        if not stat.S_ISREG(entry.st.st_mode):
            raise fail(errno.EINVAL if entry.is_dir else errno.EOPNOTSUPP)
        return view.upper.open(node.rel, os.O_WRONLY), entry

    def setattr(self, node: Node, body: memoryview) -> bytes:
        fields = abi.SETATTR_IN.unpack_from(body)
        valid, _, _, size, _, atime, mtime, _, atime_ns, mtime_ns, _, mode, _, uid, gid, _ = fields
        view = self.view
        if (valid & abi.FATTR_UID and uid != view.uid) or (
            valid & abi.FATTR_GID and gid != view.gid
        ):
            raise fail(errno.EPERM)
        if node.stale:
            tree, rel = view.orphans, node.orphan
            entry = self._private_orphan(node)
        else:
            self._entry(node)
            self._need(node, Permission.WRITE)
            tree, rel = view.upper, node.rel
            entry = view.copy_up(node.rel)
        if valid & abi.FATTR_MODE:
            if stat.S_ISLNK(entry.st.st_mode):
                raise fail(errno.EOPNOTSUPP)
            tree.chmod(rel, _settable(mode))
        if valid & abi.FATTR_SIZE:
            fd, entry = self._writable_file(node)
            try:
                view.charge(size - entry.st.st_size)
                os.ftruncate(fd, size)
                self._wrote(node, fd)
            finally:
                os.close(fd)
        if valid & (abi.FATTR_ATIME | abi.FATTR_MTIME | abi.FATTR_ATIME_NOW | abi.FATTR_MTIME_NOW):
            current = tree.lstat(rel)
            now = time.time_ns()
            new_atime = current.st_atime_ns
            new_mtime = current.st_mtime_ns
            if valid & abi.FATTR_ATIME_NOW:
                new_atime = now
            elif valid & abi.FATTR_ATIME:
                new_atime = atime * 1_000_000_000 + atime_ns
            if valid & abi.FATTR_MTIME_NOW:
                new_mtime = now
            elif valid & abi.FATTR_MTIME:
                new_mtime = mtime * 1_000_000_000 + mtime_ns
            tree.utime(rel, (new_atime, new_mtime))
        if not node.stale:
            view.events.record("modified", node.rel)
        entry = Entry(UPPER, tree.lstat(rel))
        return abi.Reply.attr_out(attributes(view, node, entry), CACHE_SECONDS)

    def readlink(self, node: Node, body: memoryview) -> bytes:
        entry = self._entry(node)
        if not stat.S_ISLNK(entry.st.st_mode):
            raise fail(errno.EINVAL)
        self._need(node, Permission.READ)
        return os.fsencode(self.view.readlink(node.rel, entry))

    # -- creating and removing ----------------------------------------------------------------

    def mkdir(self, parent: Node, body: memoryview) -> bytes:
        mode, umask = abi.MKDIR_IN.unpack_from(body)
        node = self._new_entry(parent, _name(body[abi.MKDIR_IN.size :]))
        if isinstance(node, bytes):
            return node
        self.view.upper.mkdir(node.rel, _settable(mode) & ~umask)
        return self._made(parent, node)

    def mknod(self, parent: Node, body: memoryview) -> bytes:
        mode, _, umask, _ = abi.MKNOD_IN.unpack_from(body)
        if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)):
            raise fail(errno.EPERM)  # no device nodes
        node = self._new_entry(parent, _name(body[abi.MKNOD_IN.size :]))
        if isinstance(node, bytes):
            return node
        with self.view.upper.parent(node.rel) as (fd, leaf):
            os.mknod(leaf, stat.S_IFMT(mode) | (_settable(mode) & ~umask), dir_fd=fd)
        return self._made(parent, node)

    def symlink(self, parent: Node, body: memoryview) -> bytes:
        name, target = _two_names(body)
        if not target or len(target) >= 4096:
            raise fail(errno.ENAMETOOLONG if target else errno.ENOENT)
        node = self._new_entry(parent, name)
        if isinstance(node, bytes):
            return node
        self.view.upper.symlink(os.fsdecode(target), node.rel)
        return self._made(parent, node)

    def link(self, parent: Node, body: memoryview) -> bytes:
        (old_id,) = abi.LINK_IN.unpack_from(body)
        source = self.nodes.by_id.get(old_id)
        if source is None:
            raise fail(errno.ESTALE)
        entry = self._entry(source)
        if entry.is_dir:
            raise fail(errno.EPERM)
        # Both names reach one content: the source must be writable as well.
        self._need(source, Permission.WRITE)
        node = self._new_entry(parent, _name(body[abi.LINK_IN.size :]))
        if isinstance(node, bytes):
            return node
        self.view.copy_up(source.rel)
        self.view.upper.link(source.rel, node.rel)
        return self._made(parent, node)

    def _remove(self, node: Node, entry: Entry) -> None:
        """Remove a checked entry; a file's content stays for whoever holds it open."""
        orphan = ""
        if node.id and not entry.is_dir and (node.lookups > 0 or node.recovered):
            orphan = self.view.keep_orphan(node.rel, entry, node.id)
        self.view.remove(node.rel, entry)
        self.nodes.removed(node.rel, orphan)
        self.view.events.record("deleted", node.rel)

    def unlink(self, parent: Node, body: memoryview) -> bytes:
        node = self._child(parent, _name(body))
        try:
            entry = self._existing(node)
        except OSError:
            if self.resent:
                return b""
            raise
        self._need(node, Permission.WRITE)
        if entry.is_dir:
            raise fail(errno.EISDIR)
        self._remove(node, entry)
        return b""

    def rmdir(self, parent: Node, body: memoryview) -> bytes:
        node = self._child(parent, _name(body))
        try:
            entry = self._existing(node)
        except OSError:
            if self.resent:
                return b""
            raise
        self._need(node, Permission.WRITE)
        if not entry.is_dir:
            raise fail(errno.ENOTDIR)
        if self.view.has_visible_children(node.rel):
            raise fail(errno.ENOTEMPTY)
        self._remove(node, entry)
        return b""

    def rename(self, parent: Node, body: memoryview) -> bytes:
        (new_dir,) = abi.RENAME_IN.unpack_from(body)
        return self._rename(parent, new_dir, 0, body[abi.RENAME_IN.size :])

    def rename2(self, parent: Node, body: memoryview) -> bytes:
        new_dir, flags, _ = abi.RENAME2_IN.unpack_from(body)
        return self._rename(parent, new_dir, flags, body[abi.RENAME2_IN.size :])

    def _rename(self, parent: Node, new_dir: int, flags: int, names: memoryview) -> bytes:
        view = self.view
        old_name, new_raw = _two_names(names)
        new_parent = self.nodes.by_id.get(new_dir)
        if new_parent is None:
            raise fail(errno.ESTALE)
        self._entry(parent)
        self._entry(new_parent)
        if flags & abi.RENAME_EXCHANGE:
            raise fail(errno.EINVAL)
        new_name = _name(new_raw)
        source = self._child(parent, old_name)
        target = self._child(new_parent, new_name)
        try:
            entry = self._existing(source)
        except OSError:
            if self.resent and view.locate(target.rel) is not None:
                # Done by a process that died before it answered (and, maybe, before it
                # wrote down where the nodes went): the table follows the rename now.
                self.nodes.removed(target.rel)
                self.nodes.rename(source.rel, target.rel)
                return b""
            raise
        self._need(source, Permission.WRITE)
        self._need(target, Permission.WRITE)
        old, new = source.rel, target.rel
        if entry.is_dir:
            if new == old or new.startswith(old + "/"):
                raise fail(errno.EINVAL)
            self._check_moved_tree(old, new)
            if len(os.fsencode(new)) > len(os.fsencode(old)):
                grown = view.longest_below(old) - len(os.fsencode(old)) + len(os.fsencode(new))
                if grown > MAX_PATH:
                    raise fail(errno.ENAMETOOLONG)
        view.check_length(new)
        if new == old:
            return b""
        existing = view.locate(new)
        if existing is not None and view.visible_state(target.state, target.level, existing.is_dir):
            if flags & abi.RENAME_NOREPLACE:
                raise fail(errno.EEXIST)
            if existing.is_dir and not entry.is_dir:
                raise fail(errno.EISDIR)
            if entry.is_dir and not existing.is_dir:
                raise fail(errno.ENOTDIR)
            if existing.is_dir and view.has_visible_children(new):
                raise fail(errno.ENOTEMPTY)
            self._remove(target, existing)
        elif existing is not None:
            raise self._refused(new)  # hidden there: never replaced, never revealed
        view.rename(old, new)
        self.nodes.removed(new)
        self.nodes.rename(old, new)
        view.events.record("renamed", old, to=new)
        return b""

    def _check_moved_tree(self, old: str, new: str) -> None:
        """Everything visible below a moved directory leaves ``old`` and lands under ``new``
        (iteratively: the depth is the sandbox's to choose)."""
        view = self.view
        pending = [old]
        while pending:
            current = pending.pop()
            for child, entry in view.visible_children(current):
                moved = new + child[len(old) :]
                if view.level(child) is not Permission.WRITE:
                    raise self._refused(child)
                if view.level(moved) is not Permission.WRITE:
                    raise self._refused(moved)
                if entry.is_dir:
                    pending.append(child)

    # -- files --------------------------------------------------------------------------------

    def read(self, node: Node, body: memoryview) -> bytes:
        _, offset, size, _ = abi.READ_IN.unpack_from(body)
        if node.stale:
            self._orphan_entry(node)
            fd = self.view.orphans.open(node.orphan, os.O_RDONLY)
        else:
            self._need(node, Permission.READ)  # (a node is only ever made for a visible path)
            fd = self.view.open_file(node.rel, os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def write(self, node: Node, body: memoryview) -> bytes:
        _, offset, size, _, _, _, _ = abi.WRITE_IN.unpack_from(body)
        data = body[abi.WRITE_IN.size : abi.WRITE_IN.size + size]
        fd, _ = self._writable_file(node)
        try:
            end = offset + len(data)
            self.view.charge(end - os.fstat(fd).st_size)
            written = os.pwrite(fd, data, offset)
            self._wrote(node, fd)
        finally:
            os.close(fd)
        return abi.WRITE_OUT.pack(written, 0)

    def fallocate(self, node: Node, body: memoryview) -> bytes:
        _, offset, length, mode, _ = abi.FALLOCATE_IN.unpack_from(body)
        if mode:
            raise fail(errno.EOPNOTSUPP)
        fd, _ = self._writable_file(node)
        try:
            self.view.charge(offset + length - os.fstat(fd).st_size)
            os.posix_fallocate(fd, offset, length)
        finally:
            os.close(fd)
        return b""

    def fsync(self, node: Node, body: memoryview) -> bytes:
        _, flags, _ = abi.FSYNC_IN.unpack_from(body)
        entry = None if node.stale else self.view.locate(node.rel)
        if entry is None or entry.layer == LOWER or not stat.S_ISREG(entry.st.st_mode):
            return b""  # nothing of ours to flush: the codebase is the server's
        fd = self.view.upper.open(node.rel, os.O_RDONLY)
        try:
            (os.fdatasync if flags & abi.FSYNC_FDATASYNC else os.fsync)(fd)
        finally:
            os.close(fd)
        return b""

    def statfs(self, node: Node, body: memoryview) -> bytes:
        st = os.statvfs(self.view.upper.fd)
        return abi.STATFS_OUT.pack(
            st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree,
            st.f_bsize, 255, st.f_frsize, 0,
        )  # fmt: skip

    def nothing(self, node: Node, body: memoryview) -> bytes:
        return b""

    # -- directories --------------------------------------------------------------------------

    # Listings. The offset of each entry is its position among the entries the view shows
    # (``.`` and ``..`` included), never the host's: a host offset would tell how many
    # hidden entries sit between two shown ones (tmpfs numbers its entries) or give the hash
    # of a hidden name (ext4). Where the last reply stopped is remembered, so a listing goes
    # on from there; any other offset is found by counting again.

    def _shown(
        self, node: Node, cookie: int
    ) -> Iterator[tuple[str, Entry | None, MatchState | None, int]]:
        """The entries the view shows in directory ``node`` from the host ``cookie``: name,
        entry (None for ``.`` and ``..``), state, and the host cookie after it."""
        view, policy = self.view, self.view.policy
        for name, entry, after in view.listing(node.rel, cookie):
            if entry is None:
                yield name, None, None, after
                continue
            state = policy.step(node.state, name)
            if view.visible_state(state, policy.level_of(state), entry.is_dir):
                yield name, entry, state, after

    def _resume(self, node: Node, offset: int) -> int | None:
        """The host cookie to go on from after ``offset`` entries (None: past the end)."""
        if offset == 0:
            return 0
        cookie = self._cursors.pop((node.id, offset), None)
        if cookie is not None:
            return cookie
        for count, (_, _, _, after) in enumerate(self._shown(node, 0), 1):
            if count == offset:
                return after
        return None

    def _entries(self, node: Node, body: memoryview, plus: bool) -> bytes:
        _, offset, size, _ = abi.READ_IN.unpack_from(body)
        entry = self._entry(node)
        if not entry.is_dir:
            raise fail(errno.ENOTDIR)
        cookie = self._resume(node, offset)
        if cookie is None:
            return b""
        view = self.view
        out: list[bytes] = []
        room = size
        position = offset
        for name, child_entry, state, after in self._shown(node, cookie):
            raw = os.fsencode(name)
            need = abi.direntplus_size(len(raw)) if plus else (abi.DIRENT.size + len(raw) + 7) & ~7
            if need > room:
                break
            room -= need
            position += 1
            cookie = after
            entry_out = _NO_ENTRY  # (replaced below for a child in a READDIRPLUS answer)
            if child_entry is None or state is None:  # `.` or `..`: the kernel knows them
                ino = node.id if name == "." else self._parent_id(node)
                d_type = stat.S_IFDIR >> 12
            else:
                child = self.nodes.get(node, name, state)
                ino, d_type = child.id, abi.dirent_type(child_entry.st.st_mode)
                if plus:
                    self.nodes.looked_up(child)
                    self._note_links(child, child_entry)
                    attrs = attributes(view, child, child_entry)
                    entry_out = abi.Reply.entry(child.id, attrs, CACHE_SECONDS)
            if plus:
                out.append(abi.direntplus(entry_out, ino, position, raw, d_type))
            else:
                record = abi.DIRENT.pack(ino, position, len(raw), d_type) + raw
                out.append(record + b"\0" * (-len(record) % 8))
        if position != offset:
            self._cursors[(node.id, position)] = cookie
            while len(self._cursors) > _CURSORS:
                self._cursors.popitem(last=False)
        return b"".join(out)

    def _parent_id(self, node: Node) -> int:
        if not node.rel:
            return abi.ROOT_ID
        parent = self.nodes.by_path.get(node.rel.rpartition("/")[0])
        return parent.id if parent is not None else abi.ROOT_ID

    def readdirplus(self, node: Node, body: memoryview) -> bytes:
        return self._entries(node, body, plus=True)

    def readdir(self, node: Node, body: memoryview) -> bytes:
        return self._entries(node, body, plus=False)

    # -- extended attributes (the user namespace only) ----------------------------------------

    def _xattr_fd(self, node: Node, *, write: bool) -> int:
        view = self.view
        entry = self._entry(node)
        if not (entry.is_dir or stat.S_ISREG(entry.st.st_mode)):
            raise fail(errno.EOPNOTSUPP)
        self._need(node, Permission.WRITE if write else Permission.READ)
        if write:
            entry = view.copy_up(node.rel)
        flags = os.O_RDONLY | (os.O_DIRECTORY if entry.is_dir else 0)
        return view.tree(entry.layer).open(node.rel, flags)

    @staticmethod
    def _xattr_name(raw: memoryview) -> str:
        data = bytes(raw).partition(b"\0")[0]
        if not data.startswith(_XATTR_PREFIX):
            raise fail(errno.EOPNOTSUPP)
        return os.fsdecode(data)

    @staticmethod
    def _sized(value: bytes, size: int) -> bytes:
        if size == 0:
            return abi.GETXATTR_OUT.pack(len(value), 0)
        if len(value) > size:
            raise fail(errno.ERANGE)
        return value

    def getxattr(self, node: Node, body: memoryview) -> bytes:
        size, _ = abi.GETXATTR_IN.unpack_from(body)
        key = self._xattr_name(body[abi.GETXATTR_IN.size :])
        fd = self._xattr_fd(node, write=False)
        try:
            return self._sized(os.getxattr(fd, key), size)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise fail(errno.ENODATA) from None
            raise
        finally:
            os.close(fd)

    def listxattr(self, node: Node, body: memoryview) -> bytes:
        size, _ = abi.GETXATTR_IN.unpack_from(body)
        fd = self._xattr_fd(node, write=False)
        try:
            names = [n for n in os.listxattr(fd) if n.startswith("user.")]
        finally:
            os.close(fd)
        return self._sized(b"".join(os.fsencode(n) + b"\0" for n in names), size)

    def setxattr(self, node: Node, body: memoryview) -> bytes:
        size, flags = abi.SETXATTR_IN.unpack_from(body)
        rest = bytes(body[abi.SETXATTR_IN.size :])
        raw_name, _, value = rest.partition(b"\0")
        key = self._xattr_name(memoryview(raw_name))
        if size > _MAX_XATTR_VALUE:
            raise fail(errno.E2BIG)
        fd = self._xattr_fd(node, write=True)
        try:
            os.setxattr(fd, key, value[:size], flags)
        finally:
            os.close(fd)
        self.view.events.record("modified", node.rel)
        return b""

    def removexattr(self, node: Node, body: memoryview) -> bytes:
        key = self._xattr_name(body)
        fd = self._xattr_fd(node, write=True)
        try:
            os.removexattr(fd, key)
        finally:
            os.close(fd)
        self.view.events.record("modified", node.rel)
        return b""
