"""The FUSE kernel protocol, as far as the permission filesystem speaks it (pure: no I/O).

Layouts follow ``<linux/fuse.h>`` (protocol 7.x, little-endian, 64-bit aligned). A request is
a ``fuse_in_header`` and an opcode's argument struct; a reply is a ``fuse_out_header`` and
the reply struct; a notification is a reply with unique 0 and the notify code as its error.
Only what :mod:`.operations` needs is here; every other opcode is answered ENOSYS.
"""

from __future__ import annotations

import stat
import struct

KERNEL_MAJOR = 7
# The minor version we answer INIT with: the kernel then speaks min(its, ours). 7.40 has
# FUSE_NOTIFY_RESEND; nothing here depends on a struct newer than 7.36's.
OUR_MINOR = 40
ROOT_ID = 1

# -- opcodes ----------------------------------------------------------------------------------
LOOKUP = 1
FORGET = 2  # no reply
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
CREATE = 35  # answered ENOSYS: MKNOD then (no OPEN)
INTERRUPT = 36
DESTROY = 38
BATCH_FORGET = 42  # no reply
FALLOCATE = 43
READDIRPLUS = 44
RENAME2 = 45

# -- INIT flags (fuse_init_in/out.flags; flags2 holds bits 32-63) ----------------------------
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
DO_READDIRPLUS = 1 << 13
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
HANDLE_KILLPRIV_V2 = 1 << 28
INIT_EXT = 1 << 30

# -- other flags ------------------------------------------------------------------------------
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8

FSYNC_FDATASYNC = 1 << 0
UNIQUE_RESEND = 1 << 63  # a request the kernel sent again (after FUSE_NOTIFY_RESEND)

NOTIFY_INVAL_INODE = 2
NOTIFY_INVAL_ENTRY = 3
NOTIFY_RESEND = 7

# -- structs ----------------------------------------------------------------------------------
IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct("<QQQqqqIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid (nsec x2)
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags (flags2 at offset 16)
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
SETATTR_IN = struct.Struct("<IIQQQqqqIIIIIIII")
MKNOD_IN = struct.Struct("<IIII")  # mode rdev umask padding
MKDIR_IN = struct.Struct("<II")  # mode umask
RENAME_IN = struct.Struct("<Q")  # newdir
RENAME2_IN = struct.Struct("<QII")  # newdir flags padding
LINK_IN = struct.Struct("<Q")  # oldnodeid
READ_IN = struct.Struct("<QQII")  # fh offset size read_flags (lock_owner, flags follow)
WRITE_IN = struct.Struct("<QQIIQII")  # fh offset size write_flags lock_owner flags padding
WRITE_OUT = struct.Struct("<II")
FSYNC_IN = struct.Struct("<QII")
SETXATTR_IN = struct.Struct("<II")  # size flags (without FUSE_SETXATTR_EXT)
GETXATTR_IN = struct.Struct("<II")  # size padding
GETXATTR_OUT = struct.Struct("<II")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
FALLOCATE_IN = struct.Struct("<QQQII")
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
DIRENT = struct.Struct("<QQII")  # ino off namelen type
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("<QII")

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1


class Reply:
    """Builders of reply payloads (the out header is added by the caller)."""

    __slots__ = ()

    @staticmethod
    def attr(
        ino: int,
        st_size: int,
        st_blocks: int,
        atime_ns: int,
        mtime_ns: int,
        ctime_ns: int,
        mode: int,
        nlink: int,
        uid: int,
        gid: int,
    ) -> bytes:
        return ATTR.pack(
            ino,
            st_size,
            st_blocks,
            atime_ns // 1_000_000_000,
            mtime_ns // 1_000_000_000,
            ctime_ns // 1_000_000_000,
            atime_ns % 1_000_000_000,
            mtime_ns % 1_000_000_000,
            ctime_ns % 1_000_000_000,
            mode,
            nlink,
            uid,
            gid,
            0,  # rdev
            4096,  # blksize
            0,  # flags
        )

    @staticmethod
    def entry(nodeid: int, attr: bytes, timeout: int) -> bytes:
        """A ``fuse_entry_out``; ``nodeid`` 0 is a negative entry cached for ``timeout``."""
        return ENTRY_OUT.pack(nodeid, 0, timeout, timeout, 0, 0) + attr

    @staticmethod
    def attr_out(attr: bytes, timeout: int) -> bytes:
        return ATTR_OUT.pack(timeout, 0, 0) + attr


def dirent_type(mode: int) -> int:
    """The ``d_type`` of a file mode (DT_DIR is S_IFDIR >> 12, and so on)."""
    return stat.S_IFMT(mode) >> 12


def direntplus(entry: bytes, ino: int, offset: int, name: bytes, d_type: int) -> bytes:
    """One ``fuse_direntplus`` record, padded to 8 bytes."""
    record = entry + DIRENT.pack(ino, offset, len(name), d_type) + name
    return record + b"\0" * (-len(record) % 8)


def direntplus_size(name_length: int) -> int:
    return (ENTRY_OUT.size + ATTR.size + DIRENT.size + name_length + 7) & ~7


def reply_header(unique: int, error: int, payload_length: int) -> bytes:
    """``error`` is a positive errno (0 for success); the kernel wants it negated."""
    return OUT_HEADER.pack(OUT_HEADER.size + payload_length, -error, unique)


def notify(code: int, payload: bytes) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + len(payload), code, 0) + payload


def notify_inval_inode(nodeid: int, offset: int = 0, length: int = 0) -> bytes:
    """Drop the kernel's attributes of ``nodeid`` and, from ``offset`` (negative: none), its
    cached pages (a directory's pages are its cached listing)."""
    return notify(NOTIFY_INVAL_INODE, NOTIFY_INVAL_INODE_OUT.pack(nodeid, offset, length))


def notify_inval_entry(parent: int, name: bytes) -> bytes:
    """Drop the kernel's entry (or negative entry) ``name`` in the directory ``parent``."""
    return notify(
        NOTIFY_INVAL_ENTRY, NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), 0) + name + b"\0"
    )


def notify_resend() -> bytes:
    """Ask the kernel to send again every request read from the device but not answered."""
    return notify(NOTIFY_RESEND, b"")


def init_reply(kernel_minor: int, max_readahead: int, kernel_flags: int, max_write: int) -> bytes:
    """Our answer to FUSE_INIT: what we want of what the kernel offers.

    Not FUSE_ATOMIC_O_TRUNC: with no OPEN requests the kernel would fold O_TRUNC into the
    OPEN it no longer sends (``echo x > file`` would keep the old tail); without it the
    kernel sends SETATTR(size=0). Not the writeback cache: every write must reach us, to be
    checked and counted. HANDLE_KILLPRIV_V2: set-user-ID bits never exist here, so the
    kernel need not ask for ``security.capability`` before every write.
    """
    wanted = (
        ASYNC_READ
        | BIG_WRITES
        | DO_READDIRPLUS
        | PARALLEL_DIROPS
        | MAX_PAGES
        | CACHE_SYMLINKS
        | HANDLE_KILLPRIV_V2
        | INIT_EXT
    )
    flags = wanted & kernel_flags
    return INIT_OUT.pack(
        KERNEL_MAJOR,
        min(OUR_MINOR, kernel_minor),
        max_readahead,
        flags & 0xFFFFFFFF,
        64,  # max_background
        48,  # congestion_threshold
        max_write,
        1,  # time_gran: nanoseconds
        max_write // 4096,  # max_pages
        0,  # map_alignment
        flags >> 32,
    )
