"""What a view shows of an entry's attributes: its level as mode bits, and nothing hidden.

The mount uses ``default_permissions``: the kernel checks every open and every change of a
name against the owner (the sandbox's uid) and the mode we report, which is how it can open
files without asking us. So the mode *is* the level, for the owner:

========  ====================================  =========================================
level     file                                  directory
========  ====================================  =========================================
write     its own mode                          its own mode
read      its mode without ``w``, at least r    its mode without ``w``, at least r-x
view      no permission at all                  r-x (listed; its files are what they are)
none      (absent)                              r-x when something below is granted
========  ====================================  =========================================

A directory below ``write`` shows ``w`` too where the policy may grant ``write`` to some
name below it, so that the kernel lets the creation through to us; we check the new name's
own level. The view's root shows no bits for group and others: no other user of the host
can enter the view through its mount.

A directory's host size and link count would tell how many entries it hides, so every
directory shows the same: 4096 bytes and 1 link (which tools read as "unknown", as on btrfs).
Not a count of what the view shows: the kernel asks for a directory's attributes again after
every change in it, so a count would cost a listing per change (``rm -rf`` quadratic).
"""

from __future__ import annotations

import stat

from ..types import Permission
from ._abi import Reply
from .nodes import Node
from .view import Entry, View

_NO_SET_ID = ~(stat.S_ISUID | stat.S_ISGID)


def shown_mode(node: Node, entry: Entry) -> int:
    mode = entry.st.st_mode
    perm = stat.S_IMODE(mode) & _NO_SET_ID
    level = node.level
    if stat.S_ISDIR(mode):
        if level is Permission.WRITE:
            shown = perm
        else:
            shown = (perm & 0o555) | 0o500 if level is Permission.READ else 0o555
            if node.state.may_write_below():
                shown |= 0o200
        if not node.rel:
            shown &= 0o700
    elif stat.S_ISLNK(mode):
        shown = 0o777
    elif level is Permission.WRITE:
        shown = perm
    elif level is Permission.READ:
        shown = (perm & 0o555) | 0o400
    else:
        shown = 0
    return stat.S_IFMT(mode) | shown


def attributes(view: View, node: Node, entry: Entry) -> bytes:
    st = entry.st
    if stat.S_ISDIR(st.st_mode):
        size, blocks, nlink = 4096, 8, 1
    else:
        size, blocks, nlink = st.st_size, st.st_blocks, st.st_nlink
    return Reply.attr(
        node.id,
        size,
        blocks,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
        shown_mode(node, entry),
        nlink,
        view.uid,
        view.gid,
    )
