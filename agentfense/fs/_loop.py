"""Serving one view's FUSE connection: a thread of its own, reading and answering.

One view's worst behaviour (a flood of requests, a huge copy-up, a commit of 50,000 entries)
occupies its own thread and its own kernel queue: every other view has its own connection
and thread. Every request is answered inside error handling (an unexpected exception is
logged and answered EIO; serving goes on). The thread blocks in ``read`` on the device (a
``poll`` first would cost a wake-up more per request); its buffer is an anonymous mapping of
which only the pages a request touched are resident, and those a large write touched are
given back, so an idle view costs its thread's stack and a page or two.

Other work on the view (its commits) runs on a thread of its own while the serving thread
waits between two requests (:meth:`ViewServer.exclusive`): nothing else touches the view.
Notifications (dropping what the kernel caches) are written by a short-lived thread too: the
kernel may need this view's thread to answer a request before it can take one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

from . import _abi as abi
from . import control
from .generation import Generation
from .operations import Operations
from .view import View

log = logging.getLogger("agentfense.fs")
_libc = ctypes.CDLL(None)

MAX_WRITE = 1 << 20  # the largest WRITE the kernel sends, and the largest READ it asks for
_BUFFER_SIZE = MAX_WRITE + 4096  # a request: headers and up to MAX_WRITE bytes of data
_KEEP_RESIDENT = 64 * 1024  # after a larger request, the buffer's tail goes back to the kernel
# Requests that may write down nodes or deletions (every other one writes nothing down).
_WRITES_DOWN = frozenset(
    {abi.LOOKUP, abi.MKNOD, abi.MKDIR, abi.SYMLINK, abi.LINK, abi.UNLINK, abi.RMDIR,
     abi.RENAME, abi.RENAME2, abi.READDIRPLUS, abi.READDIR}
)  # fmt: skip
_REMOVES = frozenset({abi.UNLINK, abi.RMDIR})
# What cannot change a view: every other request counts in its generation (``generation``).
_READS = frozenset(
    {abi.LOOKUP, abi.GETATTR, abi.READLINK, abi.OPEN, abi.READ, abi.STATFS, abi.RELEASE,
     abi.FSYNC, abi.GETXATTR, abi.LISTXATTR, abi.FLUSH, abi.OPENDIR, abi.READDIR,
     abi.RELEASEDIR, abi.FSYNCDIR, abi.INTERRUPT, abi.READDIRPLUS}
)  # fmt: skip


class Notifier:
    """Writes notifications to one connection, in order, from a thread that exists only
    while there are some to write. ``send`` returns an event set once they are written.
    Once :meth:`close` is called (before the connection's fd is), nothing more is written:
    a number closed may be another file's by then (a hostile tester saw a destroyed view's
    notifier write on into a number reused by a directory)."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Iterable[bytes], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._running = False
        self._writing = threading.Lock()  # (held by each write, and by close)
        self._closed = False

    def close(self) -> None:
        """No more writes: from now on what is sent is dropped (and said written)."""
        with self._writing:
            self._closed = True

    def send(self, messages: Iterable[bytes]) -> threading.Event:
        """Write ``messages`` (iterated in the notifier's thread) after those sent before."""
        done = threading.Event()
        self._queue.put((messages, done))
        with self._lock:
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
        return done

    def _run(self) -> None:
        while True:
            try:
                messages, done = self._queue.get_nowait()
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._running = False
                        return
                continue
            try:
                for message in messages:
                    try:
                        with self._writing:
                            if self._closed:
                                break
                            os.write(self._fd, message)
                    except OSError as exc:
                        # ENOENT: nothing cached there. ENODEV: the connection is gone.
                        if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.ENOTCONN):
                            log.warning("notification on %s: %s", self._name, exc)
            except Exception:
                log.exception("notifications on %s", self._name)
            done.set()


def _trimmed() -> Iterator[bytes]:
    """Nothing to write: when its turn comes, hand the allocator's free memory back."""
    _libc.malloc_trim(0)
    yield from ()


# Where each opcode is counted: FS_OPS names them as _abi does.
_OP_INDEX = {
    getattr(abi, name.upper()): index
    for index, name in enumerate(control.FS_OPS)
    if hasattr(abi, name.upper())
}
_OTHER = control.FS_OPS.index("other")
_OP_NAMES = {opcode: control.FS_OPS[index] for opcode, index in _OP_INDEX.items()}


class ViewServer:
    """The thread that serves one view."""

    def __init__(
        self,
        view: View,
        fd: int,
        generation: Generation,
        *,
        recover: Callable[[str | None], None] | None = None,
    ) -> None:
        """``generation``: the view's count of requests that may change it (closed with
        the view). ``recover``: take the view over from a process that died, then call it
        (with None, or why it could not) before serving."""
        self.view = view
        self.fd = fd
        self.generation = generation
        os.set_blocking(fd, True)
        self.notifier = Notifier(fd, f"notify-{view.id}")
        self.ops = Operations(view, self.notifier.send)
        self._recover = recover
        self.requests = 0
        self.closed = False  # (its connection ended: the view is closed)
        self.said_closed = False  # (that it lingers, logged once: ``FsProcess._invalidate``)
        self._op_counts = [0] * len(control.FS_OPS)  # since the last take_op_counts()
        self._next_upkeep = 0
        self._turn = threading.Condition()
        self._busy = False  # a request or exclusive work in progress
        self._waiting = 0  # exclusive work waiting for its turn: it goes before requests
        self._thread = threading.Thread(target=self._run, name=f"view-{view.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _take_over(self) -> bool:
        """Rebuild the node table from its journal and the delta's counts, then have the
        kernel send again what it sent the dead process and got no answer for (Linux 6.9
        and later). On this view's thread: others are taken over meanwhile."""
        assert self._recover is not None
        try:
            self.view.nodes.recover(self.view.nodes.journal.read())
            self.view.count_orphans()
            os.write(self.fd, abi.notify_resend())
        except Exception as exc:
            log.exception("view %s: cannot be taken over", self.view.id)
            self._recover(f"{type(exc).__name__}: {exc}")
            return False
        self._recover(None)
        return True

    def _work_waiting(self) -> bool:
        # A call, not the attribute: other threads change it while this one answers, and mypy
        # would keep the value the wait loop's test narrowed it to (and call the notify dead).
        return self._waiting > 0

    def exclusive(self, work: Callable[[], None], then: Callable[[], None] | None = None) -> None:
        """Run ``work`` on a thread of its own while no request of this view is answered,
        then ``then`` on that thread once requests are answered again."""

        def run() -> None:
            with self._turn:
                self._waiting += 1
                while self._busy:
                    self._turn.wait()
                self._waiting -= 1
                self._busy = True
            try:
                work()
            except Exception:
                log.exception("view %s: work failed", self.view.id)
            finally:
                with self._turn:
                    self._busy = False
                    self._turn.notify_all()
            if then is not None:
                try:
                    then()
                except Exception:
                    log.exception("view %s: work failed", self.view.id)

        threading.Thread(target=run, name=f"work-{self.view.id}", daemon=True).start()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        """Serve until the connection ends (the server unmounted the view, and nothing holds
        it any more); then close the view and the descriptor."""
        buffer = mmap.mmap(-1, _BUFFER_SIZE)
        try:
            if self._recover is not None and not self._take_over():
                return
            while True:
                try:
                    size = os.readv(self.fd, [buffer])
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                        continue  # ENOENT: the request was interrupted before we read it
                    if exc.errno != errno.ENODEV:
                        log.exception("view %s: reading requests", self.view.id)
                    return
                with self._turn:
                    while self._waiting or self._busy:
                        self._turn.wait()
                    self._busy = True
                try:
                    self._answer(buffer, size)
                except Exception:  # (handlers' errors are answered: this is ours)
                    log.exception("view %s: a request could not be answered", self.view.id)
                finally:
                    with self._turn:
                        self._busy = False
                        if self._work_waiting():
                            self._turn.notify_all()
                if size > _KEEP_RESIDENT:
                    buffer.madvise(mmap.MADV_DONTNEED, 0, _BUFFER_SIZE)
        finally:
            buffer.close()
            self.view.close()
            self.generation.close()
            self.notifier.close()  # (before the number may be another file's)
            self.closed = True
            os.close(self.fd)

    def take_op_counts(self) -> tuple[int, ...]:
        """The requests answered since the last call, by op (aligned with FS_OPS). Called
        from another thread: the list is swapped, never resized, so at most the increment in
        flight is lost."""
        counts, self._op_counts = self._op_counts, [0] * len(control.FS_OPS)
        return tuple(counts)

    def _answer(self, buffer: mmap.mmap, size: int) -> None:
        _, opcode, unique, nodeid, uid, _, _, extlen, _ = abi.IN_HEADER.unpack_from(buffer)
        body = memoryview(buffer)[abi.IN_HEADER.size : max(abi.IN_HEADER.size, size - extlen * 8)]
        self.requests += 1
        self._op_counts[_OP_INDEX.get(opcode, _OTHER)] += 1
        if opcode == abi.INIT:  # (also the first request after a restart of a resent INIT)
            self._reply(unique, 0, self._init(body))
            return
        if opcode in (abi.FORGET, abi.BATCH_FORGET):
            self._forget(nodeid, opcode, body)
            self._maybe_upkeep()
            return
        ops = self.ops
        handler = ops.handler(opcode)
        if handler is None:  # OPEN and OPENDIR among them: the kernel stops sending them
            self._reply(unique, errno.ENOSYS, b"")
            return
        if opcode not in _READS:  # counted before it is answered: see ``generation``
            self.generation.bump()
        ops.resent = bool(unique & abi.UNIQUE_RESEND)
        ops.op = _OP_NAMES.get(opcode, "other")
        bases = self.view.bases if opcode not in _READS else None  # (first changes note them)
        if opcode in _WRITES_DOWN or bases is not None:
            removing = opcode in _REMOVES
            try:
                if opcode in _WRITES_DOWN:
                    self.view.nodes.journal.ensure(removing=removing)
                    self.view.deleted.ensure(removing=removing)
                if bases is not None:
                    bases.ensure(removing=removing)
                    if self.view.shared is not None:
                        self.view.shared.ensure(removing=removing)
            except OSError as exc:  # a full disk: refused before anything changes
                self._reply(unique, exc.errno or errno.ENOSPC, b"")
                return
        try:
            payload = handler(ops.node(opcode, nodeid, uid), body)
            error = 0
        except OSError as exc:
            payload, error = b"", exc.errno or errno.EIO
        except Exception:
            log.exception("view %s: opcode %d failed", self.view.id, opcode)
            payload, error = b"", errno.EIO
        self._reply(unique, error, payload)

    def _reply(self, unique: int, error: int, payload: bytes) -> None:
        nodes = self.view.nodes
        try:
            nodes.journal.flush()  # the node ids this reply tells the kernel are on disk
        except OSError as exc:  # (a full disk): the kernel must not learn them, then
            error, payload = exc.errno or errno.EIO, b""
        try:
            os.writev(self.fd, [abi.reply_header(unique, error, len(payload)), payload])
        except OSError as exc:
            # ENOENT: the request was interrupted and is gone; ENODEV: so is the connection.
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.exception("view %s: replying", self.view.id)
        self._maybe_upkeep()

    def _maybe_upkeep(self) -> None:
        if self.requests >= self._next_upkeep:
            self._next_upkeep = self.requests + 64
            self._upkeep()

    def _upkeep(self) -> None:
        """Keep the node table within its budget (the kernel is asked to drop entries used
        longest ago) and its journal within twice what it describes."""
        nodes = self.view.nodes
        evict = nodes.over_budget()
        if evict:
            messages = [abi.notify_inval_entry(parent, name) for parent, name in evict]
            # What the table freed goes back to the system (C's malloc keeps it otherwise).
            self.notifier.send(itertools.chain(messages, _trimmed()))
        try:
            nodes.maybe_compact()
        except OSError:
            log.exception("view %s: compacting the journal", self.view.id)

    def _init(self, body: memoryview) -> bytes:
        _, minor, readahead, flags = abi.INIT_IN.unpack_from(body)
        if flags & abi.INIT_EXT and len(body) >= abi.INIT_IN.size + 4:
            flags |= int.from_bytes(body[abi.INIT_IN.size : abi.INIT_IN.size + 4], "little") << 32
        self._initialized = True
        return abi.init_reply(minor, readahead, flags, MAX_WRITE)

    def _forget(self, nodeid: int, opcode: int, body: memoryview) -> None:
        if opcode == abi.FORGET:
            pairs = [(nodeid, abi.FORGET_IN.unpack_from(body)[0])]
        else:
            (count, _) = abi.BATCH_FORGET_IN.unpack_from(body)
            start = abi.BATCH_FORGET_IN.size
            pairs = [
                abi.FORGET_ONE.unpack_from(body, start + i * abi.FORGET_ONE.size)
                for i in range(min(count, (len(body) - start) // abi.FORGET_ONE.size))
            ]
        view = self.view
        for ident, count in pairs:
            dropped = view.nodes.forget(ident, count)
            if dropped is not None and dropped.orphan:
                view.drop_orphan(dropped.orphan)
        with contextlib.suppress(OSError):  # (kept for the next reply's flush)
            view.nodes.journal.flush()
