"""``python -m agentfense.fs CONTROL_FD``: the permission filesystem process.

Started and supervised by the server, which mounts each view (a FUSE connection of its own)
and hands this process the connection's descriptor with :class:`~.control.AddView`. Each view
is served by a thread of its own (:mod:`._loop`); its commits run on that thread too, between
its requests. The main thread reads the control channel; replies go out as work completes.
When the channel closes, the process stops serving and exits (the server unmounts).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import assert_never

from .._json_messages import MessageError
from .._seqpacket import FrameError, close_all
from ..policy import Policy
from . import _abi as abi
from . import checkpoints, codebase_lock, control, review
from ._events import Batch
from ._host import split
from ._loop import ViewServer
from ._usage import CodebaseUsage
from .commit import commit
from .generation import Generation
from .nodes import subtree
from .view import View

log = logging.getLogger("agentfense.fs")

# A commit waits this long for other views' kernels to drop what they cached of its paths;
# a view too busy to let go sooner sees the change a little later, and holds up no one.
INVALIDATION_WAIT = 0.5


class FsProcess:
    def __init__(self, sock: socket.socket) -> None:
        self._channel = control.channel(sock)
        self._send_lock = threading.Lock()
        self.servers: dict[str, ViewServer] = {}
        self._usages: dict[Path, CodebaseUsage] = {}

    def reply(self, message: control.Reply) -> None:
        with self._send_lock:
            self._channel.send(message.encode())

    def run(self) -> None:
        self.reply(control.Done(seq=0))  # ready
        while True:
            try:
                received = self._channel.receive()
            except (OSError, FrameError):
                log.exception("control channel")
                break
            if received is None:
                break
            payload, fds = received
            try:
                message = control.decode_request(payload)
            except MessageError as exc:
                close_all(fds)
                log.warning("control channel: %s", exc)
                if exc.seq is None:
                    break  # nothing to answer: the server hears of it by our exit
                self.reply(control.Failed(f"a malformed request: {exc}", seq=exc.seq))
                continue
            try:
                self.handle(message, fds)
            except Exception as exc:
                limits = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
                if not limits:  # (the sandbox's limits: its error, not ours)
                    log.exception("%s failed", message.op)
                close_all(fds)
                code = errno.ENOSPC if limits else 0
                self.reply(control.Failed(f"{type(exc).__name__}: {exc}", code, seq=message.seq))

    def handle(self, message: control.Request, fds: list[int]) -> None:
        if isinstance(message, control.AddView):
            if len(fds) != 2:
                raise ValueError("add_view comes with two descriptors (connection, generation)")
            self._add_view(message, fds[0], fds[1])  # a view taken over answers when it is
            return
        close_all(fds)
        if isinstance(message, control.Ping):
            self.reply(control.Done(seq=message.seq))
        elif isinstance(message, control.RemoveView):
            self._remove_view(message.id)
            self.reply(control.Done(seq=message.seq))
        elif isinstance(message, control.Commit):
            server = self._server(message.id)
            server.exclusive(lambda: self._commit(server, message.seq))
        elif isinstance(message, control.ListChanges | control.Apply | control.Discard):
            server = self._server(message.id)
            answers: list[Callable[[], None]] = []
            server.exclusive(
                lambda: answers.append(self._review(server, message)),
                then=lambda: answers[0](),
            )
        elif isinstance(message, control.Capture | control.Restore):
            server = self._server(message.id)
            answers = []
            server.exclusive(
                lambda: answers.append(self._layer(server, message)),
                then=lambda: answers[0](),
            )
        elif isinstance(message, control.WatchEvents):
            self._server(message.id).view.events.watch(
                message.after,
                functools.partial(self._send_events, message.seq),
                message.wait_ms / 1000,
            )
        elif isinstance(message, control.Changed):
            threading.Thread(target=self._changed, args=(message,), daemon=True).start()
        else:
            assert_never(message)

    def _server(self, view_id: str) -> ViewServer:
        server = self.servers.get(view_id)
        if server is None:
            raise ValueError(f"no view {view_id}")
        return server

    def _add_view(self, spec: control.AddView, fd: int, generation_fd: int) -> None:
        """Serve the view. When this raises, both fds are still open: the caller closes
        every fd a request brought (each in one place: a number closed twice may be another
        thread's by then)."""
        generation = Generation(generation_fd)
        try:
            self._serve(spec, fd, generation)
        except BaseException:
            generation.close()
            raise
        os.close(generation_fd)  # (mapped: the count lives on in the mapping)

    def _serve(self, spec: control.AddView, fd: int, generation: Generation) -> None:
        if spec.id in self.servers:  # asked again after a restart that took it over
            generation.close()
            os.close(fd)
            self.reply(control.Done(seq=spec.seq))
            return
        lower = Path(spec.lower)
        usage = self._usages.get(lower)
        if usage is None:
            usage = self._usages[lower] = CodebaseUsage(lower)
            usage.count(wait=0.1)
        view = View(
            spec.id,
            lower=lower,
            delta=Path(spec.delta),
            policy=Policy(spec.rules),
            uid=spec.uid,
            gid=spec.gid,
            limits=spec.limits,
            usage=usage,
            review=spec.review,
        )
        if spec.seeded:  # a fork's: it may bring in no more than its limits allow
            try:
                view.check_room(view.delta_bytes, view.delta_entries)
            except BaseException:
                view.close()
                raise

        def taken_over(error: str | None) -> None:
            if error is None:
                self.reply(control.Done(seq=spec.seq))
            else:
                self.servers.pop(spec.id, None)
                self.reply(control.Failed(error, seq=spec.seq))

        server = ViewServer(view, fd, generation, recover=taken_over if spec.recover else None)
        self.servers[spec.id] = server
        server.start()
        if not spec.recover:
            self.reply(control.Done(seq=spec.seq))

    def _remove_view(self, view_id: str) -> None:
        # Its thread serves on until the server unmounts the view; then it closes the view.
        server = self.servers.pop(view_id, None)
        if server is not None:
            lower = server.view.lower.root
            if not any(s.view.lower.root == lower for s in self.servers.values()):
                self._usages.pop(lower, None)

    # -- commits and what other views cached --------------------------------------------------

    def _commit(self, server: ViewServer, seq: int) -> None:
        view = server.view
        try:
            generation = server.generation.read()  # (no request runs meanwhile: exclusive)
            with codebase_lock.writing(view.lower.root):
                result = commit(view)
        except Exception as exc:
            log.exception("view %s: commit failed", view.id)
            self.reply(control.Failed(f"commit: {type(exc).__name__}: {exc}", seq=seq))
            return
        over_limit, view.over_limit = view.over_limit, False
        if result.changed:
            self._invalidate(view.lower.root, result.changed, exclude=server)
        counts = len(result.changed), len(result.kept)
        ops = server.take_op_counts()
        self.reply(
            control.Committed(
                *counts,
                over_limit,
                result.written,
                result.bytes_delta,
                result.entries_delta,
                ops,
                generation,
                bool(result.kept) or not view.upper_empty,
                seq=seq,
            )
        )

    def _review(
        self, server: ViewServer, message: control.ListChanges | control.Apply | control.Discard
    ) -> Callable[[], None]:
        """Do ``message``'s work (while the view answers no request); what then answers it.
        A discard changes what the view itself shows: its kernel drops what it cached of
        those paths before the answer, once the view serves again (the kernel may need the
        view's thread to let go)."""
        view = server.view
        messages: list[bytes] = []
        try:
            if isinstance(message, control.ListChanges):
                changes = review.listed(review.survey(view), message.paths)
                entries = tuple(
                    control.ChangeEntry(c.path, c.kind.value, c.type.value, c.size, c.mode)
                    for c in changes[: review.MAX_LISTED]
                )
                reply: control.Reply = control.Changes(entries, len(changes), seq=message.seq)
                return lambda: self.reply(reply)
            generation = server.generation.read()  # (no request runs meanwhile: exclusive)
            if isinstance(message, control.Discard):
                discarded = review.discard(view, message.paths)
                tops = [*discarded, *(message.paths if message.paths is not None else [""])]
                messages = _invalidations(view, tops, subtrees=True)
                result = review.Applied(applied=discarded)
            elif message.paths == ():
                result = review.Applied()  # (only what the requests did since)
            else:
                with codebase_lock.writing(view.lower.root):
                    result = review.apply(view, message.paths, overwrite=message.overwrite)
                if result.changed:
                    self._invalidate(view.lower.root, result.changed, exclude=server)
        except Exception as exc:
            log.exception("view %s: %s failed", view.id, message.op)
            failed = control.Failed(f"{message.op}: {type(exc).__name__}: {exc}", seq=message.seq)
            return lambda: self.reply(failed)
        over_limit, view.over_limit = view.over_limit, False
        reply = control.Committed(
            len(result.changed),
            0,
            over_limit,
            result.written,
            result.bytes_delta,
            result.entries_delta,
            server.take_op_counts(),
            generation,
            not view.upper_empty or bool(view.deleted.paths),
            tuple(result.applied),
            tuple(result.conflicts),
            seq=message.seq,
        )

        def answer() -> None:
            if messages:
                server.notifier.send(messages).wait(INVALIDATION_WAIT)
            self.reply(reply)

        return answer

    def _layer(
        self, server: ViewServer, message: control.Capture | control.Restore
    ) -> Callable[[], None]:
        """Copy the view's layer aside, or back (while the view answers no request); what
        then answers. A restore changes everything the view shows: its kernel drops what it
        cached, as after a discard."""
        view = server.view
        messages: list[bytes] = []
        try:
            if isinstance(message, control.Capture):
                budget = checkpoints.Budget(message.most_entries, message.most_bytes)
                copied = checkpoints.capture(view, Path(message.target), budget)
                reply: control.Reply = control.Captured(
                    copied.entries, copied.size, budget.made, budget.allocated, seq=message.seq
                )
            else:
                before = review.survey(view).changes.keys()
                checkpoints.restore(view, Path(message.source), view.upper.root.parent)
                differ = sorted(before | review.survey(view).changes.keys())
                messages = _invalidations(view, ["", *differ], subtrees=True)
                reply = control.Done(seq=message.seq)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                log.exception("view %s: %s failed", view.id, message.op)
            text = f"{message.op}: {type(exc).__name__}: {exc}"
            code = errno.ENOSPC if exc.errno == errno.ENOSPC else 0  # (the sandbox's limits)
            reply = control.Failed(text, code, seq=message.seq)
        except Exception as exc:
            log.exception("view %s: %s failed", view.id, message.op)
            reply = control.Failed(f"{message.op}: {type(exc).__name__}: {exc}", seq=message.seq)

        def answer() -> None:
            if messages:
                server.notifier.send(messages).wait(INVALIDATION_WAIT)
            self.reply(reply)

        return answer

    def _send_events(self, seq: int, batch: Batch) -> None:
        entries = tuple(
            control.EventEntry(e.seq, e.time_ns, e.kind, e.path, e.to, e.operation, e.rule)
            for e in batch.events
        )
        try:
            self.reply(control.Events(entries, batch.next, batch.lost, seq=seq))
        except OSError as exc:  # (the server went away meanwhile)
            log.debug("events not sent: %s", exc)

    def _changed(self, message: control.Changed) -> None:
        usage = self._usages.get(Path(message.lower))
        if usage is not None:
            usage.count()
        self._invalidate(Path(message.lower), message.paths, exclude=None)
        self.reply(control.Done(seq=message.seq))

    def _invalidate(self, lower: Path, paths: Sequence[str], exclude: ViewServer | None) -> None:
        """Every other view of the codebase at ``lower`` drops what its kernel cached of
        ``paths`` (the entry in its parent, the parent's listing, the file) before the
        change is acknowledged; a view that cannot within INVALIDATION_WAIT catches up later."""
        waiting = []
        for view_id, server in list(self.servers.items()):
            if server is exclude or server.view.lower.root != lower:
                continue
            if server.closed:  # (unmounted, never removed: said once, then left alone)
                if not server.said_closed:
                    server.said_closed = True
                    log.warning("view %s: its connection ended, but it was never removed", view_id)
                continue
            messages = _invalidations(server.view, paths)
            if messages:
                waiting.append(server.notifier.send(messages))
        deadline = INVALIDATION_WAIT
        for done in waiting:
            started = time.monotonic()
            done.wait(max(0.0, deadline))
            deadline -= time.monotonic() - started


def _invalidations(view: View, paths: Sequence[str], *, subtrees: bool = False) -> list[bytes]:
    """What drops the kernel's caches of ``paths`` in ``view``: the entry in its parent (a
    negative one too), the parent's listing, the node; with ``subtrees``, every node below
    each too, and its entry (the view's own content changed there)."""
    nodes = view.nodes.by_path  # read from another thread: single lookups only
    messages: list[bytes] = []
    parents: set[str] = set()
    for rel in paths:
        node = nodes.get(rel)
        if node is not None:
            messages.append(abi.notify_inval_inode(node.id))
            if subtrees:
                for below in subtree(node):
                    if below is not node and below.parent is not None:
                        messages.append(abi.notify_inval_inode(below.id))
                        below_name = os.fsencode(below.name)
                        messages.append(abi.notify_inval_entry(below.parent.id, below_name))
        if not rel:
            continue  # (the root: no entry of its own)
        parent_rel, name = split(rel)
        parent = nodes.get(parent_rel)
        if parent is not None:
            messages.append(abi.notify_inval_entry(parent.id, os.fsencode(name)))
            if parent_rel not in parents:
                parents.add(parent_rel)
                messages.append(abi.notify_inval_inode(parent.id))
    return messages


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="agentfense-fs: %(message)s")
    # Every mode this process gives is exact (a sandbox's request applies the sandbox's own
    # umask, a copy keeps the mode it copies): under a umask of its own, `umask 0; mkdir d`
    # in a sandbox made a 0755 directory, and a commit, fork or restore of a 0777 one too.
    os.umask(0)
    threading.stack_size(512 * 1024)  # nothing here recurses: small stacks, many views
    channel = socket.socket(fileno=int(sys.argv[1]))
    FsProcess(channel).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
