"""A sandbox's connection log: bounded, numbered for its life, counts kept up to date."""

from __future__ import annotations

from agentfense.server.network.connections import ConnectionLog, Verdict


def test_the_log_keeps_the_last_entries_and_counts_the_dropped() -> None:
    log = ConnectionLog(3)
    for i in range(5):
        log.add("http", f"h{i}.test", 80, Verdict.DENIED, "no")
    assert [entry.seq for entry in log.after(0)] == [3, 4, 5]
    assert [entry.seq for entry in log.after(4)] == [5]
    assert log.after(2**64) == []
    assert log.dropped == 2


def test_an_allowed_connection_s_bytes_are_brought_up_to_date_until_it_ends() -> None:
    log = ConnectionLog(10)
    seq = log.add("connect", "pypi.org", 443, Verdict.ALLOWED, address="151.101.0.223")
    log.update(seq, up=10, down=2000)
    assert (log.after(0)[0].bytes_up, log.after(0)[0].bytes_down) == (10, 2000)
    log.update(seq, up=11, down=3000, ended=True)
    log.update(seq, up=99, down=99)  # (ended: no more)
    assert (log.after(0)[0].bytes_up, log.after(0)[0].bytes_down) == (11, 3000)


def test_an_open_connection_pushed_out_is_no_longer_updated() -> None:
    log = ConnectionLog(1)
    seq = log.add("connect", "a.test", 443, Verdict.ALLOWED)
    log.add("http", "b.test", 80, Verdict.DENIED)
    log.update(seq, up=1, down=1)
    assert [entry.host for entry in log.after(0)] == ["b.test"]


def test_the_denied_targets_since_a_command_began_each_once() -> None:
    log = ConnectionLog(100)
    log.add("http", "before.test", 80, Verdict.DENIED)
    seen = log.last_seq
    log.add("http", "a.test", 80, Verdict.DENIED)
    log.add("dns", "a.test", 53, Verdict.DENIED)
    log.add("http", "a.test", 80, Verdict.DENIED)
    log.add("connect", "ok.test", 443, Verdict.ALLOWED)
    assert log.denied_after(seen) == ["a.test:80", "a.test"]
