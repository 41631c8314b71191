"""The session protocol's pure parts: quoting, and cutting a stream at its end marker."""

from __future__ import annotations

import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from agentfense.server import shell_protocol as protocol

TOKEN = ("__af_0123456789abcdef", "fedcba9876543210")
MARKER = (TOKEN[0] + TOKEN[1]).encode()


def _feed_all(scanner: protocol.MarkerScanner, data: bytes, cuts: list[int]) -> bytes:
    out = b""
    last = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        out += scanner.feed(data[last:cut])
        last = cut
    return out


@given(
    output=st.binary(max_size=300),
    status=st.integers(0, 255),
    after=st.binary(max_size=50),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_output_before_the_marker_comes_out_whole_however_it_is_split(
    output: bytes, status: int, after: bytes, cuts: list[int]
) -> None:
    scanner = protocol.MarkerScanner(TOKEN, with_status=True)
    stream = output + MARKER + f" {status}\n".encode() + after
    assert _feed_all(scanner, stream, cuts) == output
    assert scanner.done()
    assert scanner.status == status
    assert scanner.rest == after


@given(output=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_without_a_marker_nothing_is_lost(output: bytes, cuts: list[int]) -> None:
    scanner = protocol.MarkerScanner(TOKEN, with_status=False)
    seen = _feed_all(scanner, output, cuts) + scanner.flush()
    assert seen == output
    assert not scanner.done()


def test_stderr_marker_has_no_status_and_a_split_token_is_not_a_marker() -> None:
    scanner = protocol.MarkerScanner(TOKEN, with_status=False)
    half = f"{TOKEN[0]} {TOKEN[1]}\n".encode()  # what `set -x` shows of the driver
    assert scanner.feed(half) == half
    assert not scanner.done()
    assert scanner.feed(MARKER + b"\n") == b""
    assert scanner.done()
    assert scanner.status is None


@settings(max_examples=50, deadline=None)
@given(text=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40))
def test_quote_gives_the_shell_the_text_back(text: str) -> None:
    done = subprocess.run(
        ["sh", "-c", f"printf %s {protocol.quote(text)}"], capture_output=True, check=True
    )
    assert done.stdout == text.encode()


def test_the_marker_says_when_the_driver_stopped_the_command() -> None:
    stopped = protocol.MarkerScanner(TOKEN, with_status=True)
    assert stopped.feed(b"out" + MARKER + b" 130 stopped\n") == b"out"
    assert (stopped.done(), stopped.status, stopped.stopped) == (True, 130, True)
    finished = protocol.MarkerScanner(TOKEN, with_status=True)
    finished.feed(MARKER + b" 0\n")
    assert (finished.status, finished.stopped) == (0, False)
