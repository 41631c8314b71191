"""The ring of a view's events (``fs/_events.py``) under watchers that come and go: every
watch is answered once, promptly, and holds nothing once answered."""

from __future__ import annotations

import threading
import time

import pytest

from agentfense.fs import _events
from agentfense.fs._events import Batch, EventRing


def _timers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, threading.Timer)]


def _settled(most: int) -> int:
    deadline = time.monotonic() + 2
    while len(_timers()) > most and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(_timers())


def test_a_watch_answered_holds_no_thread_until_its_deadline() -> None:
    """A watcher answered by an event (or pushed out by newer ones) leaves no timer behind:
    a sandbox busy while watched, or a client watching over and over, would otherwise keep
    a thread per watch alive in the fs process for the whole wait."""
    ring = EventRing()
    before = len(_timers())
    answers: list[Batch] = []
    after = 0
    for i in range(200):
        ring.watch(after, answers.append, wait=60)
        ring.record("created", f"f{i}")
        after = answers[-1].next
    assert len(answers) == 200
    for _ in range(3 * _events.MOST_WAITERS):  # watchers that never come back
        ring.watch(after, answers.append, wait=60)
    assert _settled(before + _events.MOST_WAITERS) <= before + _events.MOST_WAITERS
    ring.close()
    assert _settled(before) == before


class _ThenRecord:
    """The ring's lock, which records an event (as the view's thread would, just then) the
    first time it is let go."""

    def __init__(self, ring: EventRing) -> None:
        self._ring = ring
        self._lock = ring._lock
        self._pending = True

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        if self._pending:
            self._pending = False
            self._ring.record("created", "meanwhile")


def test_an_event_recorded_while_a_watch_begins_answers_it() -> None:
    """The watch looks for events, finds none, and waits: an event recorded in between
    answers it (it is not left waiting for its deadline)."""
    ring = EventRing()
    ring.watch(0, lambda _: None, wait=0)  # (recording)
    ring._lock = _ThenRecord(ring)  # type: ignore[assignment]
    answers: list[Batch] = []
    ring.watch(0, answers.append, wait=60)
    assert [e.path for a in answers for e in a.events] == ["meanwhile"]
    ring.close()


def test_a_change_a_second_after_its_files_last_event_is_an_event_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writes in a row are one event, but a later write to the same file is not lost in it
    (a watcher that had the first event hears of the second)."""
    clock = [10**18]
    monkeypatch.setattr(time, "time_ns", lambda: clock[0])
    ring = _events.EventRing()
    ring.active = True
    ring.record("modified", "notes.md")
    clock[0] += 500_000_000
    ring.record("modified", "notes.md")  # (the same run)
    clock[0] += _events.RUN_NS
    ring.record("modified", "notes.md")
    answers: list[_events.Batch] = []
    ring.watch(0, answers.append, 0)
    assert [(e.seq, e.path) for e in answers[0].events] == [(1, "notes.md"), (2, "notes.md")]
