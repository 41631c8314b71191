"""How much a codebase holds (bytes of its files, number of its entries), against its caps.

Shared by every view of one codebase in the fs process: counted once by a walk in the
background when the first view comes (until then no cap applies), then kept up to date by
each commit; counted again when the server says it changed the codebase itself (an upload).
"""

from __future__ import annotations

import logging
import stat
import threading
from pathlib import Path

from ._host import HostTree

log = logging.getLogger("agentfense.fs")


class CodebaseUsage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self.bytes = 0
        self.entries = 0
        self.known = False  # counted at least once
        self._counting = False
        self._again = False
        self._done = threading.Event()

    def count(self, wait: float = 0.0) -> None:
        """(Re)count in the background, waiting up to ``wait`` seconds for the result (a
        small codebase is counted by then); a request during a count makes one more."""
        with self._lock:
            if self._counting:
                self._again = True
                return
            self._counting = True
            self._done.clear()
        threading.Thread(target=self._count, name="usage", daemon=True).start()
        self._done.wait(wait)

    def _count(self) -> None:
        while True:
            try:
                size, entries = _walk(self.root)
            except OSError:
                log.exception("counting the codebase at %s", self.root)
                size, entries = self.bytes, self.entries
            with self._lock:
                self.bytes, self.entries, self.known = size, entries, True
                if not self._again:
                    self._counting = False
                    self._done.set()
                    return
                self._again = False

    def add(self, size: int, entries: int) -> None:
        """A commit changed the codebase by ``size`` bytes and ``entries`` entries."""
        with self._lock:
            self.bytes = max(0, self.bytes + size)
            self.entries = max(0, self.entries + entries)


def _walk(root: Path) -> tuple[int, int]:
    """The bytes of the regular files below ``root`` and its number of entries (iterative)."""
    tree = HostTree(root)
    size = entries = 0
    try:
        pending = [""]
        while pending:
            current = pending.pop()
            for name, st in tree.scan(current):
                entries += 1
                if stat.S_ISDIR(st.st_mode):
                    pending.append(f"{current}/{name}" if current else name)
                elif stat.S_ISREG(st.st_mode):
                    size += st.st_size
    finally:
        tree.close()
    return size, entries
