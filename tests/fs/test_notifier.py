"""A view's notifier writes in order, and nothing once closed: the number of a connection
closed may be another file's by then (a hostile tester saw a destroyed view's notifier write
on, into a number reused by a directory)."""

from __future__ import annotations

import os

from agentfense.fs._loop import Notifier


def test_a_closed_notifier_writes_nothing_more() -> None:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        notifier = Notifier(write_end, "notify-test")
        assert notifier.send([b"one", b"two"]).wait(5)
        assert os.read(read_end, 100) == b"onetwo"
        notifier.close()
        assert notifier.send([b"three"]).wait(5)  # (said written: nobody waits for ever)
        try:
            leaked = os.read(read_end, 100)
        except BlockingIOError:
            leaked = b""
        assert leaked == b""
    finally:
        os.close(read_end)
        os.close(write_end)
