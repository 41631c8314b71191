"""What a view's requests did, as events for whoever watches the sandbox: entries made,
changed, removed, renamed, and what the permission filesystem refused (with the rule that
decided). A bounded ring per view, kept only once someone has watched (a sandbox nobody
watches records nothing and holds nothing).

Loss policy: the ring keeps the last :data:`RING` events; a watcher that falls further
behind is told how many it missed (``lost``), then goes on from the oldest kept. Changes of
one file's content in a row, within a second of its event, are that event. Recorded by the
view's thread; read by the control thread (a lock between them); a watcher waiting for the
next event is answered by whichever thread records it, or by its deadline.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

RING = 1024  # events kept per view
RUN_NS = 1_000_000_000  # writes to one file this soon after its event: the same event
MOST_PER_BATCH = 256
MOST_WAITERS = 32  # watches waiting at once on one view (beyond: the oldest is answered)


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    time_ns: int  # wall clock
    kind: str  # created, modified, deleted, renamed, denied
    path: str
    to: str = ""  # renamed: where to
    operation: str = ""  # denied: what was tried (the request: lookup, unlink, setattr...)
    rule: str = ""  # denied: the rule that decided, as the policy describes it


@dataclass(frozen=True, slots=True)
class Batch:
    events: tuple[Event, ...]
    next: int  # the seq to ask after next time
    lost: int  # events the watcher missed (the ring had moved on)


Waiter = Callable[[Batch], None]


@dataclass(frozen=True, slots=True)
class _Waiting:
    after: int
    answer: Waiter
    timer: threading.Timer  # its deadline: cancelled once answered (no thread outlives it)


class EventRing:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: deque[Event] = deque(maxlen=RING)
        self._seq = 0  # the last event's
        self.active = False
        self._waiters: list[_Waiting] = []

    def record(
        self, kind: str, path: str, *, to: str = "", operation: str = "", rule: str = ""
    ) -> None:
        if not self.active:
            return
        with self._lock:
            last = self._events[-1] if self._events else None
            now = time.time_ns()
            if (
                kind == "modified"
                and last is not None
                and (last.kind, last.path) == (kind, path)
                and now - last.time_ns < RUN_NS
            ):
                return  # (one event for a run of writes to one file)
            self._seq += 1
            event = Event(self._seq, now, kind, path, to, operation, rule)
            self._events.append(event)
            waiters, self._waiters = self._waiters, []
        self._answer(waiters)

    def _answer(self, waiters: list[_Waiting]) -> None:
        for waiting in waiters:
            waiting.timer.cancel()
            waiting.answer(self._since(waiting.after))

    def _since(self, after: int) -> Batch:
        with self._lock:
            return self._since_locked(after)

    def _since_locked(self, after: int) -> Batch:
        if after >= self._seq:  # (nothing after it yet; past the last: from now on)
            return Batch((), self._seq if after > self._seq else after, 0)
        first = self._events[0].seq if self._events else self._seq + 1
        lost = max(0, first - (after + 1)) if after < self._seq else 0
        picked = [e for e in self._events if e.seq > after][:MOST_PER_BATCH]
        following = picked[-1].seq if picked else max(after, self._seq)
        return Batch(tuple(picked), following, lost)

    def watch(self, after: int, answer: Waiter, wait: float) -> None:
        """Answer with the events after ``after`` as soon as there are some (or, after
        ``wait`` seconds, with none). The first watch starts the recording."""
        self.active = True
        with self._lock:  # (looked and waiting at once: an event between would pass it by)
            batch = self._since_locked(after)
            if batch.events or batch.lost or wait <= 0:
                waiting = None
            else:
                timer = threading.Timer(wait, self._expire, args=(answer,))
                timer.daemon = True
                waiting = _Waiting(after, answer, timer)
                self._waiters.append(waiting)
            pushed_out = self._waiters[:-MOST_WAITERS] if len(self._waiters) > MOST_WAITERS else []
            del self._waiters[: len(pushed_out)]
        if waiting is None:
            answer(batch)
            return
        waiting.timer.start()  # (cancelled already if answered meanwhile: it ends at once)
        self._answer(pushed_out)

    def _expire(self, answer: Waiter) -> None:
        with self._lock:
            found = next((i for i, w in enumerate(self._waiters) if w.answer is answer), None)
            if found is None:
                return  # answered already
            waiting = self._waiters.pop(found)
        waiting.answer(self._since(waiting.after))

    def close(self) -> None:
        """The view goes: every watcher is answered (with what is left)."""
        with self._lock:
            waiters, self._waiters = self._waiters, []
        self._answer(waiters)
