"""Mounts the views, runs the permission filesystem process that serves them, and replaces
that process if it dies, without the sandboxes noticing.

Each view is a FUSE mount of its own under ``state_dir/fs/views/<id>``, made here; the device
descriptor of its connection is kept here for the view's whole life and a copy is handed to
the fs process (:class:`~agentfense.fs.control.AddView`). If that process dies (a bug, the
OOM killer, a SIGKILL), the connections live on: the kernel holds the sandboxes' requests
until a new process takes each view over (``recover``: it rebuilds the view's node table
from its journal and asks the kernel to send again what the dead one never answered). A
view that cannot be taken over is reported to ``on_lost`` with a sentence.

Requests on the control channel are answered as they complete (a long commit of one view
holds up no other view's): each carries a sequence number its reply repeats. A reply that
does not decode fails its request (INTERNAL, with a sentence); a channel that no longer
frames, or a reply that does not even say which request it answers, means the process is
broken: it is killed and replaced like a dead one, and what it left unanswered is asked again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc

from .._json_messages import MessageError
from .._seqpacket import Channel, FrameError, close_all
from ..errors import ResourceLimitExceededError, SandboxError, StatusCode
from ..fs import control
from ..fs._device import MountError, mount_view, mounted_views, unmount
from ..fs._host import remove_tree
from ..fs.generation import Generation, new_fd
from .metrics import ServerMetrics

log = logging.getLogger("agentfense.server.fs")

_RESTART_WAIT = 60.0
R = TypeVar("R", bound=control.Reply)


@dataclass
class _Mounted:
    spec: control.AddView
    fd: int  # the connection's device: kept while the view lives
    generation_fd: int  # its count of requests that may change it (``fs.generation``)
    generation: Generation
    clean: int | None = None  # the count when a commit last left nothing in the delta
    asked: int = 0  # the count when an Apply last reported what the requests did

    def close(self) -> None:
        self.generation.close()
        os.close(self.generation_fd)
        os.close(self.fd)  # with the mount gone, the connection ends


class _Pending:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: control.Reply | None = None


class FsSupervisor:
    def __init__(
        self,
        state_dir: Path,
        *,
        on_lost: Callable[[str, str], Awaitable[None]],
        metrics: ServerMetrics,
    ) -> None:
        self._metrics = metrics
        self.views_dir = state_dir / "fs" / "views"
        self._deltas_dir = state_dir / "deltas"
        self._log_path = state_dir / "logs" / "fs.log"
        self._on_lost = on_lost
        self._views: dict[str, _Mounted] = {}
        self._process: anyio.abc.Process | None = None
        self._channel: Channel | None = None
        self._send_lock = anyio.Lock()
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        self._stop_called = False
        self._ready = anyio.Event()  # set while a process serves every view
        # Processes started so far: what a view's events count from (each process's own).
        self.launches = 0

    def _stopping(self) -> bool:
        # A call, not the attribute: stop() sets it while a task awaits, and mypy would keep
        # the value a test before that await narrowed it to (and call what follows unreachable).
        return self._stop_called

    def view_path(self, view_id: str) -> Path:
        return self.views_dir / view_id

    # -- the process --------------------------------------------------------------------------

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        for leftover in mounted_views(self.views_dir):  # a killed server's
            await anyio.to_thread.run_sync(unmount, leftover)
        for directory in (self.views_dir.parent, self.views_dir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o711)  # sandboxes reach their view; nothing here can be listed
        for leftover in self.views_dir.iterdir():
            with contextlib.suppress(OSError):
                leftover.rmdir()
        # The deltas of a killed server's sandboxes: no record of those survived it, and a
        # commit it was making left each file whole in the codebase, old or new.
        dead = list(self._deltas_dir.glob("sb_*")) if self._deltas_dir.is_dir() else []
        for leftover in dead:
            await anyio.to_thread.run_sync(remove_tree, leftover)
        if dead:
            log.warning("removed the deltas of %d sandboxes gone with a killed server", len(dead))
        await self._launch(task_group)
        self._ready.set()
        task_group.start_soon(self._watch, task_group)

    async def _launch(self, task_group: anyio.abc.TaskGroup) -> None:
        self.launches += 1
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._log_path.open("ab") as log_file:
                self._process = await anyio.open_process(
                    [sys.executable, "-m", "agentfense.fs", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    pass_fds=(theirs.fileno(),),
                    # One thread per view: one malloc arena each would keep what each
                    # freed; two arenas for all keep the process's memory what it uses.
                    env={**os.environ, "MALLOC_ARENA_MAX": "2"},
                )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._channel = control.channel(ours)
        self._pending = {0: (ready := _Pending())}  # a table per process: no reply mix-ups
        task_group.start_soon(self._read_replies, self._channel, self._process, self._pending)
        with anyio.move_on_after(30):
            await ready.done.wait()
        if not isinstance(ready.reply, control.Done):
            raise SandboxError(
                f"the permission filesystem did not start: {self._log_tail()}",
                code=StatusCode.INTERNAL,
            )

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self._log_path.read_text(errors="replace").strip()[-2000:]
        return ""

    async def _read_replies(
        self, channel: Channel, process: anyio.abc.Process, pending: dict[int, _Pending]
    ) -> None:
        """Hand each reply to the request waiting for it in ``pending`` (this process's)."""
        try:
            while True:
                try:
                    received = await channel.receive_async()
                except OSError:
                    return  # closed: the process is gone
                if received is None:
                    return
                payload, fds = received
                close_all(fds)  # none expected: never leak one
                try:
                    reply: control.Reply = control.decode_reply(payload)
                except MessageError as exc:
                    if exc.seq is None:
                        raise
                    reply = control.Failed(f"a malformed reply ({exc})", seq=exc.seq)
                waiting = pending.pop(reply.seq, None)
                if waiting is None and isinstance(reply, control.Events):
                    continue  # (a watch whose watcher left before an event came)
                if waiting is None:
                    log.warning(
                        "the permission filesystem answered %d, which no one asked", reply.seq
                    )
                    continue
                waiting.reply = reply
                waiting.done.set()
        except anyio.ClosedResourceError:
            pass  # closed while waiting: the process is gone
        except (FrameError, MessageError):
            # Whatever it is doing, its answers cannot be told apart any more: replace it.
            log.exception("the permission filesystem's channel broke; replacing it")
            if process.returncode is None:
                process.kill()
        finally:
            # The process is gone (or broken): nobody will answer what is waiting, nor what
            # is sent from now on (it fails at once), and requests wait for the next one.
            with contextlib.suppress(OSError):
                channel.sock.shutdown(socket.SHUT_RDWR)
            if self._channel is channel and self._ready.is_set() and not self._stopping():
                self._ready = anyio.Event()
            for waiting in pending.values():
                waiting.done.set()
            pending.clear()

    async def _watch(self, task_group: anyio.abc.TaskGroup) -> None:
        while not self._stopping():
            process = self._process
            assert process is not None
            await process.wait()
            if self._stopping():
                return
            log.error(
                "the permission filesystem exited (%s); a new one takes its views over: %s",
                process.returncode,
                self._log_tail(),
            )
            if self._ready.is_set():  # (else its reader did, and requests wait on that one)
                self._ready = anyio.Event()
            if self._channel is not None:
                anyio.notify_closing(self._channel.sock)
                self._channel.sock.close()
                self._channel = None
            try:
                await self._launch(task_group)
            except SandboxError:
                if self._stopping():
                    return
                raise
            async with anyio.create_task_group() as tg:  # each view at its own pace
                for view_id, mounted in list(self._views.items()):
                    tg.start_soon(self._take_over, view_id, mounted)
            self._ready.set()

    async def _take_over(self, view_id: str, mounted: _Mounted) -> None:
        try:
            await self._request(
                replace(mounted.spec, recover=True),
                control.Done,
                (mounted.fd, mounted.generation_fd),
            )
        except SandboxError as exc:
            await self._lose(view_id, f"the permission filesystem restarted: {exc}")

    async def _lose(self, view_id: str, reason: str) -> None:
        mounted = self._views.pop(view_id, None)
        if mounted is not None:
            await anyio.to_thread.run_sync(unmount, self.view_path(view_id))
            mounted.close()
        await self._on_lost(view_id, reason)

    async def stop(self) -> None:
        self._stop_called = True
        with anyio.CancelScope(shield=True):
            if self._channel is not None:
                with contextlib.suppress(OSError):
                    self._channel.sock.shutdown(socket.SHUT_RDWR)
            if self._process is not None:
                with anyio.move_on_after(10):
                    await self._process.wait()
                if self._process.returncode is None:
                    self._process.kill()
                    await self._process.wait()
            if self._channel is not None:
                self._channel.sock.close()
                self._channel = None
            for view_id, mounted in list(self._views.items()):
                await anyio.to_thread.run_sync(unmount, self.view_path(view_id))
                mounted.close()
            self._views.clear()

    # -- requests -----------------------------------------------------------------------------

    async def wait_ready(self) -> None:
        """Wait while the process is being replaced (its views are taken over)."""
        if not self._ready.is_set():
            with anyio.move_on_after(_RESTART_WAIT):
                await self._ready.wait()
            if not self._ready.is_set():
                raise SandboxError(
                    "the permission filesystem is restarting; try again",
                    code=StatusCode.UNAVAILABLE,
                )

    async def _request(
        self,
        message: control.Request,
        answer: type[R],
        fds: Sequence[int] = (),
        *,
        leave: bool = False,
    ) -> R:
        """Send one request and wait for its answer (others may be answered meanwhile);
        counted by op and result."""
        try:
            reply = await self._exchange(message, answer, fds, leave=leave)
        except SandboxError as exc:
            unavailable = exc.code == StatusCode.UNAVAILABLE
            self._metrics.fs_control.labels(
                message.op, "unavailable" if unavailable else "failed"
            ).inc()
            raise
        self._metrics.fs_control.labels(message.op, "ok").inc()
        return reply

    async def _exchange(
        self, message: control.Request, answer: type[R], fds: Sequence[int], *, leave: bool
    ) -> R:
        """``leave``: a caller cancelled stops waiting for the answer (which is dropped when
        it comes) rather than wait it out; for a request that changes nothing (a watch)."""
        self._seq += 1
        message = replace(message, seq=self._seq)
        payload = message.encode()
        pending = _Pending()
        with anyio.CancelScope(shield=True):  # the fs process acts on it whatever we do
            async with self._send_lock:
                channel = self._channel
                if channel is None:
                    raise _NotSent()
                self._pending[message.seq] = pending
                try:
                    await channel.send_async(payload, fds)
                except OSError:  # (the process is gone: nothing of it was read)
                    self._pending.pop(message.seq, None)
                    raise _NotSent() from None
            if not leave:
                await pending.done.wait()
        if leave:
            table = self._pending
            try:
                await pending.done.wait()
            finally:
                if not pending.done.is_set():  # (its answer, when it comes, is no one's)
                    table.pop(message.seq, None)
        reply = pending.reply
        if reply is None:
            raise _unavailable()
        if isinstance(reply, control.Failed):
            if reply.errno == errno.ENOSPC:  # (what the sandbox asked would pass its limits)
                raise ResourceLimitExceededError(
                    "the sandbox's changes would pass its limits (max_delta_bytes, "
                    "max_delta_entries, max_codebase_bytes, max_codebase_entries): "
                    f"{reply.message}"
                )
            raise SandboxError(f"permission filesystem: {reply.message}", code=StatusCode.INTERNAL)
        if not isinstance(reply, answer):
            raise SandboxError(
                f"permission filesystem: {reply.op} is no answer to {message.op}",
                code=StatusCode.INTERNAL,
            )
        return reply

    async def request(
        self,
        message: control.Request,
        answer: type[R],
        fds: Sequence[int] = (),
        *,
        leave: bool = False,
        interrupted: str = "",
    ) -> R:
        """Send one request once a process serves every view and wait for its ``answer``;
        if that process dies before answering, wait for the next one and ask it again
        (every request is idempotent), unless ``interrupted`` says why its answer would
        not be what happened (then UNAVAILABLE, saying so)."""
        for _ in range(3):
            await self.wait_ready()
            try:
                return await self._request(message, answer, fds, leave=leave)
            except SandboxError as exc:
                if exc.code != StatusCode.UNAVAILABLE or self._stopping():
                    raise
                if interrupted and not isinstance(exc, _NotSent):
                    raise SandboxError(interrupted, code=StatusCode.UNAVAILABLE) from None
                await anyio.sleep(0.05)
        raise _unavailable()

    # -- views --------------------------------------------------------------------------------

    async def add_view(self, spec: control.AddView, *, seeded: bool = False) -> Path:
        """Mount the view and have it served; its path on the host. ``seeded``: its delta
        holds a copy of another view's layer (a fork)."""
        mountpoint = self.view_path(spec.id)
        await self.wait_ready()
        mountpoint.mkdir(mode=0o755, exist_ok=True)
        try:
            fd = await anyio.to_thread.run_sync(mount_view, mountpoint)
        except BaseException as exc:  # (OSError: /dev/fuse not opened, EMFILE say; or the
            with contextlib.suppress(OSError):  # call cancelled before the thread began)
                mountpoint.rmdir()
            if not isinstance(exc, MountError):
                raise
            raise SandboxError(str(exc), code=StatusCode.INTERNAL) from None
        generation_fd = -1
        try:
            generation_fd = new_fd()
            # (a new view has nothing to commit: its delta is new, its count 0; unless seeded)
            clean = None if seeded else 0
            mounted = _Mounted(spec, fd, generation_fd, Generation(generation_fd), clean=clean)
        except BaseException:  # (EMFILE: the mapping takes a descriptor of its own too)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(unmount, mountpoint)
            os.close(fd)
            if generation_fd >= 0:
                os.close(generation_fd)
            with contextlib.suppress(OSError):
                mountpoint.rmdir()
            raise
        self._views[spec.id] = mounted
        try:
            await self.request(spec, control.Done, (fd, generation_fd))
        except BaseException:
            with anyio.CancelScope(shield=True):
                self._views.pop(spec.id, None)
                await anyio.to_thread.run_sync(unmount, mountpoint)
                mounted.close()
                with contextlib.suppress(OSError):
                    mountpoint.rmdir()
            raise
        return mountpoint

    async def remove_view(self, view_id: str) -> None:
        mounted = self._views.pop(view_id, None)
        if mounted is None:
            return
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(SandboxError):
                await self.request(control.RemoveView(view_id), control.Done)
            mountpoint = self.view_path(view_id)
            await anyio.to_thread.run_sync(unmount, mountpoint)
            mounted.close()
            with contextlib.suppress(OSError):
                mountpoint.rmdir()

    def may_have_changed(self, view_id: str, *, since_asked: bool = False) -> bool:
        """Whether the view may have something to commit: it took a request that may
        change it since a commit that left nothing behind (what a command that has ended
        did is counted; see ``fs.generation``). With ``since_asked``: since an Apply last
        reported on its requests (under review, the delta stays)."""
        mounted = self._views.get(view_id)
        if mounted is None:
            return True
        count = mounted.generation.read()
        return mounted.asked != count if since_asked else mounted.clean != count

    def _note(self, view_id: str, reply: control.Committed) -> control.Committed:
        mounted = self._views.get(view_id)
        if mounted is not None:
            mounted.clean = None if reply.pending else reply.generation
            mounted.asked = reply.generation
        return reply

    async def commit(self, view_id: str) -> control.Committed:
        return self._note(view_id, await self.request(control.Commit(view_id), control.Committed))

    async def apply(
        self, view_id: str, paths: tuple[str, ...] | None, *, overwrite: bool = False
    ) -> control.Committed:
        """Commit the view's changes at ``paths`` (None: all; ``()``: none, which reports
        what its requests did since, as a commit does)."""
        message = control.Apply(view_id, paths, overwrite)
        # (asked again, it would report only what its second pass did: the paths the first
        # put in the codebase would be in neither the applied nor the conflicts)
        why = _interrupted("commit", "the codebase") if paths != () else ""
        return self._note(view_id, await self.request(message, control.Committed, interrupted=why))

    async def discard(self, view_id: str, paths: tuple[str, ...] | None) -> control.Committed:
        message = control.Discard(view_id, paths)
        why = _interrupted("discard", "the sandbox's changes")
        return self._note(view_id, await self.request(message, control.Committed, interrupted=why))

    async def list_changes(self, view_id: str, paths: tuple[str, ...] | None) -> control.Changes:
        return await self.request(control.ListChanges(view_id, paths), control.Changes)

    async def watch_events(self, view_id: str, after: int, wait: float) -> control.Events:
        """The view's events after ``after``: at once if there are some, else at the next
        one, or after ``wait`` seconds with none."""
        message = control.WatchEvents(view_id, after, round(wait * 1000))
        # A watcher that leaves does not wait out the long poll: it would hold its place
        # among the sandbox's watches (MAX_WATCHES) for as long.
        return await self.request(message, control.Events, leave=True)

    async def capture(
        self, view_id: str, target: Path, most_entries: int, most_bytes: int
    ) -> control.Captured:
        """Copy the view's layer into ``target`` (a directory not there yet), taking at most
        ``most_entries`` inodes and ``most_bytes`` bytes of the disk (ResourceLimitExceeded
        past them)."""
        message = control.Capture(view_id, str(target), most_entries, most_bytes)
        return await self.request(message, control.Captured)

    async def restore(self, view_id: str, source: Path) -> None:
        """Make the view's layer a copy of the one captured in ``source``."""
        await self.request(control.Restore(view_id, str(source)), control.Done)
        mounted = self._views.get(view_id)
        if mounted is not None:
            mounted.clean = None  # (whatever it holds now waits for a commit)

    async def changed(self, lower: Path, paths: Sequence[str]) -> None:
        """The server changed ``paths`` of the codebase at ``lower``: its views drop what
        their kernels cached of them."""
        if any(m.spec.lower == str(lower) for m in self._views.values()):
            await self.request(control.Changed(str(lower), tuple(paths)), control.Done)


def _interrupted(what: str, where: str) -> str:
    return (
        f"the permission filesystem restarted during the {what}: some of it may have reached "
        f"{where} and the rest not; changes() says what is left"
    )


class _NotSent(SandboxError):
    """A request no process received (it was not running, or gone before the send)."""

    def __init__(self) -> None:
        super().__init__("the permission filesystem stopped", code=StatusCode.UNAVAILABLE)


def _unavailable() -> SandboxError:
    return SandboxError("the permission filesystem stopped", code=StatusCode.UNAVAILABLE)
